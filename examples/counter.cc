// One Counter actor, incremented from several tasks at once through a handle passed to
// each task. The actor runs one method at a time, so no increment is lost.
//
//     counter [TASKS [INCREMENTS]]      defaults: 4 tasks, 100 increments each

#include <algorithm>
#include <charconv>
#include <cstring>
#include <iostream>
#include <string_view>
#include <vector>

#include "gantry/gantry.h"

/// A number that lives in its own actor process. Not thread-safe, and need not be: an
/// actor runs its method calls one at a time.
class Counter {
 public:
  /// The actor factory: `gantry::actor(Counter::create).remote(start)`.
  static Counter* create(int start) { return new Counter(start); }

  /// Adds one and returns the new value.
  int increment() { return ++value_; }
  int value() const { return value_; }

 private:
  explicit Counter(int start) : value_(start) {}

  int value_;
};

GANTRY_REMOTE(Counter::create, &Counter::increment, &Counter::value);

/// A task that calls `counter.increment()` `times` times and returns the values it got
/// back, in call order. It sends all calls before waiting: calls from one caller run in
/// the order they were made.
std::vector<int> increment_many(gantry::ActorHandle<Counter> counter, int times) {
  std::vector<gantry::ObjectRef<int>> calls;
  calls.reserve(static_cast<size_t>(times));
  for (int i = 0; i < times; ++i) calls.push_back(counter.task(&Counter::increment).remote());
  return gantry::get(calls);
}

GANTRY_REMOTE(increment_many);

namespace {

constexpr int kStart = 10;

bool parse_count(std::string_view text, int max, int& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size() && out >= 1 && out <= max;
}

int run(int argc, char** argv) {
  int tasks = 4;
  int increments = 100;
  bool help = argc > 1 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0);
  if (help || argc > 3 || (argc > 1 && !parse_count(argv[1], 1000, tasks)) ||
      (argc > 2 && !parse_count(argv[2], 1'000'000, increments))) {
    std::cerr << "usage: counter [TASKS [INCREMENTS]]   (TASKS 1..1000, INCREMENTS 1..1000000;"
                 " defaults 4 and 100)\n";
    return 2;
  }
  std::cout << "counter: " << tasks << " tasks x " << increments
            << " increments on one Counter actor that starts at " << kStart << "\n";

  gantry::ActorHandle<Counter> counter = gantry::actor(Counter::create).remote(kStart);
  std::vector<gantry::ObjectRef<std::vector<int>>> refs;
  for (int t = 0; t < tasks; ++t) refs.push_back(gantry::task(increment_many).remote(counter, increments));
  std::vector<std::vector<int>> seen = gantry::get(refs);

  // Every increment must have returned a distinct value, and each task must have seen its
  // own values in increasing order.
  bool ok = true;
  std::vector<int> all;
  for (int t = 0; t < tasks; ++t) {
    const std::vector<int>& values = seen[t];
    bool in_order = std::is_sorted(values.begin(), values.end()) &&
                    std::adjacent_find(values.begin(), values.end()) == values.end();
    ok = ok && in_order && static_cast<int>(values.size()) == increments;
    if (t < 8 && !values.empty()) {
      std::cout << "  task " << t << ": " << values.size() << " increments, saw " << values.front() << " .. "
                << values.back() << (in_order ? ", in order" : ", OUT OF ORDER") << "\n";
    }
    all.insert(all.end(), values.begin(), values.end());
  }
  if (tasks > 8) std::cout << "  ... " << tasks - 8 << " more tasks\n";
  std::sort(all.begin(), all.end());
  bool distinct = std::adjacent_find(all.begin(), all.end()) == all.end();
  if (!distinct) std::cout << "  some increments returned the same value: an update was lost\n";

  int final_value = counter.task(&Counter::value).remote().get();
  int expected = kStart + tasks * increments;
  std::cout << "  final value " << final_value << " (expected " << expected << ")\n";
  return ok && distinct && final_value == expected ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  gantry::init(argc, argv);  // in a worker process this serves tasks and never returns
  int status = 1;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "counter: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
