#include "gantry/detail/registry.h"

#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>
#include <thread>

namespace registry_test {

int add(int a, int b) { return a + b; }

int answer() { return 42; }

std::vector<std::string>& recorded() {
  static std::vector<std::string> log;
  return log;
}

void record(std::string entry) { recorded().push_back(std::move(entry)); }

double sum(const std::vector<double>& values) {
  return std::accumulate(values.begin(), values.end(), 0.0);
}

std::string describe(std::string name, int count, double scale, std::vector<double> values) {
  return name + ":" + std::to_string(count) + ":" + std::to_string(scale * sum(values));
}

int reject(int value) { throw std::invalid_argument("rejected " + std::to_string(value)); }

class Counter {
 public:
  explicit Counter(int start) : value_(start) {}
  static Counter* create(int start) { return new Counter(start); }

  int increment(int by) { return value_ += by; }
  int value() const { return value_; }
  void reset() { value_ = 0; }
  std::string label(const std::string& prefix) const { return prefix + std::to_string(value_); }

 private:
  int value_;
};

struct Broken {
  static Broken* create() { return nullptr; }
};

GANTRY_REMOTE(add);
// Registering the same function under the same name again must be harmless.
GANTRY_REMOTE(add);
GANTRY_REMOTE(answer, record, sum, describe, reject);
GANTRY_REMOTE(Counter::create, &Counter::increment, &Counter::value, &Counter::reset,
              &Counter::label);
GANTRY_REMOTE(Broken::create);

}  // namespace registry_test

namespace gantry::detail {
namespace {

using registry_test::Counter;

/// Collects a call's encoded result in a string.
class StringSink : public ResultSink {
 public:
  uint8_t* reserve(size_t size) override {
    bytes_.assign(size, '\0');
    return reinterpret_cast<uint8_t*>(bytes_.data());
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

/// Encoded arguments and the views an invoker reads; the views point into `encoded`.
struct Args {
  std::vector<std::string> encoded;
  std::vector<ArgView> views;
};

template <typename... A>
Args make_args(const A&... args) {
  Args out;
  (out.encoded.push_back(encode_to_string(args)), ...);
  for (const std::string& e : out.encoded)
    out.views.push_back(ArgView{reinterpret_cast<const uint8_t*>(e.data()), e.size()});
  return out;
}

template <typename R, typename... A>
R call_function(const std::string& name, const A&... args) {
  const FunctionEntry* entry = Registry::instance().find_function(name);
  if (entry == nullptr) throw std::logic_error("not registered: " + name);
  Args encoded = make_args(args...);
  StringSink sink;
  entry->invoke(encoded.views, sink);
  return decode_from<R>(sink.bytes());
}

std::shared_ptr<void> create_actor(const std::string& factory, int start) {
  const FactoryEntry* entry = Registry::instance().find_factory(factory);
  if (entry == nullptr) throw std::logic_error("not registered: " + factory);
  Args encoded = make_args(start);
  return entry->create(encoded.views);
}

template <typename R, typename... A>
R call_method(void* self, const std::string& name, const A&... args) {
  const MethodEntry* entry = Registry::instance().find_method(name);
  if (entry == nullptr) throw std::logic_error("not registered: " + name);
  Args encoded = make_args(args...);
  StringSink sink;
  entry->invoke(self, encoded.views, sink);
  return decode_from<R>(sink.bytes());
}

using Names = std::vector<std::string>;

TEST(SplitRemoteNamesTest, TrimsAndStripsAddressOf) {
  EXPECT_EQ(split_remote_names("fibonacci, &Counter::increment ,Counter::create"),
            (Names{"fibonacci", "Counter::increment", "Counter::create"}));
  EXPECT_EQ(split_remote_names("f"), (Names{"f"}));
  EXPECT_EQ(split_remote_names("  \t& spaced::name\n"), (Names{"spaced::name"}));
  EXPECT_EQ(split_remote_names(""), Names{});
  EXPECT_EQ(split_remote_names("   "), Names{});
}

TEST(SplitRemoteNamesTest, IgnoresCommasInsideBrackets) {
  EXPECT_EQ(split_remote_names("&Box<int, 2>::get, add<std::pair<int, int>>"),
            (Names{"Box<int, 2>::get", "add<std::pair<int, int>>"}));
  EXPECT_EQ(split_remote_names("scale<decltype(f(1, 2))>, g"),
            (Names{"scale<decltype(f(1, 2))>", "g"}));
  // '>' inside parentheses is a comparison, not the end of the template arguments.
  EXPECT_EQ(split_remote_names("pick<(1 > 2), int>, h"), (Names{"pick<(1 > 2), int>", "h"}));
}

TEST(SplitRemoteNamesTest, HandlesOperatorNames) {
  EXPECT_EQ(split_remote_names("&C::operator<, &C::operator(), h"),
            (Names{"C::operator<", "C::operator()", "h"}));
  EXPECT_EQ(split_remote_names("&C::operator,, &C::operator>>=, x"),
            (Names{"C::operator,", "C::operator>>=", "x"}));
  EXPECT_EQ(split_remote_names("my_operator, operators"), (Names{"my_operator", "operators"}));
}

TEST(RegistryTest, FunctionsAreFoundByNameWithTheirArity) {
  const Registry& registry = Registry::instance();
  ASSERT_NE(registry.find_function("add"), nullptr);
  EXPECT_EQ(registry.find_function("add")->name, "add");
  EXPECT_EQ(registry.find_function("add")->arity, 2u);
  EXPECT_EQ(registry.find_function("answer")->arity, 0u);
  EXPECT_EQ(registry.find_function("describe")->arity, 4u);
}

TEST(RegistryTest, InvokesFunctions) {
  EXPECT_EQ(call_function<int>("add", 2, 40), 42);
  EXPECT_EQ(call_function<int>("answer"), 42);
  EXPECT_EQ(call_function<double>("sum", std::vector<double>{1.5, 2.5, 4.0}), 8.0);
  EXPECT_EQ(call_function<double>("sum", std::vector<double>{}), 0.0);
  EXPECT_EQ(call_function<std::string>("describe", std::string("run"), 3, 2.0,
                                       std::vector<double>{1.0, 2.0}),
            "run:3:" + std::to_string(6.0));
}

TEST(RegistryTest, VoidFunctionWritesNil) {
  registry_test::recorded().clear();
  const FunctionEntry* entry = Registry::instance().find_function("record");
  ASSERT_NE(entry, nullptr);
  Args args = make_args(std::string("hello"));
  StringSink sink;
  entry->invoke(args.views, sink);
  EXPECT_EQ(sink.bytes(), std::string(1, '\xc0'));
  EXPECT_EQ(registry_test::recorded(), Names{"hello"});
}

TEST(RegistryTest, UserExceptionPropagatesOutOfInvoke) {
  const FunctionEntry* entry = Registry::instance().find_function("reject");
  ASSERT_NE(entry, nullptr);
  Args args = make_args(7);
  StringSink sink;
  try {
    entry->invoke(args.views, sink);
    FAIL() << "invoke returned";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "rejected 7");
  }
}

TEST(RegistryTest, BadArgumentBytesThrowDecodeError) {
  const FunctionEntry* entry = Registry::instance().find_function("add");
  ASSERT_NE(entry, nullptr);
  Args args = make_args(std::string("two"), 40);
  StringSink sink;
  EXPECT_THROW(entry->invoke(args.views, sink), DecodeError);
}

TEST(RegistryTest, NameOfFunctionAddress) {
  const Registry& registry = Registry::instance();
  EXPECT_EQ(registry.name_of(reinterpret_cast<const void*>(&registry_test::add)), "add");
  EXPECT_EQ(registry.name_of(reinterpret_cast<const void*>(&registry_test::describe)), "describe");
  EXPECT_EQ(registry.name_of(reinterpret_cast<const void*>(&Counter::create)), "Counter::create");
  int not_a_function = 0;
  EXPECT_EQ(registry.name_of(&not_a_function), "");
}

TEST(RegistryTest, FactoryCreatesActorAndMethodsRunOnIt) {
  const FactoryEntry* factory = Registry::instance().find_factory("Counter::create");
  ASSERT_NE(factory, nullptr);
  EXPECT_EQ(factory->arity, 1u);
  EXPECT_EQ(factory->class_key, class_key<Counter>());
  EXPECT_NE(factory->class_key.find("Counter"), std::string::npos);

  std::shared_ptr<void> actor = create_actor("Counter::create", 10);
  ASSERT_NE(actor, nullptr);
  EXPECT_EQ(call_method<int>(actor.get(), "Counter::increment", 5), 15);
  EXPECT_EQ(call_method<int>(actor.get(), "Counter::increment", -1), 14);
  EXPECT_EQ(call_method<int>(actor.get(), "Counter::value"), 14);
  EXPECT_EQ(call_method<std::string>(actor.get(), "Counter::label", std::string("n=")), "n=14");
  EXPECT_FALSE(call_method<std::optional<int>>(actor.get(), "Counter::reset").has_value());
  EXPECT_EQ(static_cast<Counter*>(actor.get())->value(), 0);
}

TEST(RegistryTest, MethodEntriesCarryClassAndArity) {
  const Registry& registry = Registry::instance();
  const MethodEntry* increment = registry.find_method("Counter::increment");
  const MethodEntry* value = registry.find_method("Counter::value");
  ASSERT_NE(increment, nullptr);
  ASSERT_NE(value, nullptr);
  EXPECT_EQ(increment->arity, 1u);
  EXPECT_EQ(value->arity, 0u);
  EXPECT_EQ(increment->class_key, class_key<Counter>());
  EXPECT_EQ(value->class_key, class_key<Counter>());
}

TEST(RegistryTest, MethodNameOfMemberPointer) {
  EXPECT_EQ(method_name_of(&Counter::increment), "Counter::increment");
  EXPECT_EQ(method_name_of(&Counter::value), "Counter::value");
  EXPECT_EQ(method_name_of(&Counter::label), "Counter::label");
  EXPECT_EQ(method_name_of(&Counter::reset), "Counter::reset");
}

TEST(RegistryTest, FactoryReturningNullThrows) {
  const FactoryEntry* factory = Registry::instance().find_factory("Broken::create");
  ASSERT_NE(factory, nullptr);
  EXPECT_EQ(factory->arity, 0u);
  EXPECT_THROW(factory->create({}), Error);
}

TEST(RegistryTest, UnknownNamesAreNull) {
  const Registry& registry = Registry::instance();
  EXPECT_EQ(registry.find_function("no_such_function"), nullptr);
  EXPECT_EQ(registry.find_factory("NoSuch::create"), nullptr);
  EXPECT_EQ(registry.find_method("Counter::no_such_method"), nullptr);
  // Each kind lives in its own table.
  EXPECT_EQ(registry.find_function("Counter::create"), nullptr);
  EXPECT_EQ(registry.find_factory("add"), nullptr);
  EXPECT_EQ(registry.find_method("add"), nullptr);
}

int first_impl() { return 1; }
int second_impl() { return 2; }

TEST(RegistryTest, DuplicateNameKeepsTheFirstRegistration) {
  register_function("registry_test.duplicate", &first_impl);
  register_function("registry_test.duplicate", &second_impl);
  EXPECT_EQ(call_function<int>("registry_test.duplicate"), 1);
  const Registry& registry = Registry::instance();
  EXPECT_EQ(registry.name_of(reinterpret_cast<const void*>(&first_impl)),
            "registry_test.duplicate");
  // The second function would run the first's code under that name, so it has none.
  EXPECT_EQ(registry.name_of(reinterpret_cast<const void*>(&second_impl)), "");
}

TEST(RegistryTest, ConcurrentLookupsAgree) {
  std::vector<std::thread> threads;
  std::vector<int> results(4, 0);
  for (size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&results, t] {
      for (int i = 0; i < 1000; ++i) results[t] += call_function<int>("add", i, 1) - i;
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int r : results) EXPECT_EQ(r, 1000);
}

TEST(DemangleTest, ReadableNamesWithFallback) {
  EXPECT_EQ(demangle(typeid(int).name()), "int");
  EXPECT_NE(demangle(typeid(std::string).name()).find("std::"), std::string::npos);
  EXPECT_EQ(class_key<Counter>(), "registry_test::Counter");
  EXPECT_EQ(demangle("not a mangled name"), "not a mangled name");
  EXPECT_EQ(demangle(nullptr), "");
}

}  // namespace
}  // namespace gantry::detail
