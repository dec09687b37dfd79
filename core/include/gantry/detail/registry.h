#pragma once

// GANTRY_REMOTE registers functions, actor factories and actor methods by name. The same
// executable runs as driver and worker, so a name resolves to the same code everywhere.

#include <cxxabi.h>

#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gantry/codec.h"
#include "gantry/detail/runtime.h"

namespace gantry::detail {

using Invoker = std::function<void(std::span<const ArgView>, ResultSink&)>;
using MethodInvoker = std::function<void(void* self, std::span<const ArgView>, ResultSink&)>;
/// Builds an actor instance; the shared_ptr's deleter knows the concrete type.
using FactoryInvoker = std::function<std::shared_ptr<void>(std::span<const ArgView>)>;

struct FunctionEntry {
  std::string name;
  size_t arity = 0;
  Invoker invoke;
};
struct FactoryEntry {
  std::string name;
  std::string class_key;
  size_t arity = 0;
  FactoryInvoker create;
};
struct MethodEntry {
  std::string name;
  std::string class_key;
  size_t arity = 0;
  MethodInvoker invoke;
};

/// Every registered remote callable of this executable. Filled during static
/// initialisation, read-only afterwards; lookups are thread-safe.
class Registry {
 public:
  static Registry& instance();

  void add_function(const void* address, FunctionEntry entry);
  void add_factory(const void* address, FactoryEntry entry);
  void add_method(MethodEntry entry);

  const FunctionEntry* find_function(const std::string& name) const;
  const FactoryEntry* find_factory(const std::string& name) const;
  const MethodEntry* find_method(const std::string& name) const;
  /// The registered name of a free function or factory, or empty.
  std::string name_of(const void* address) const;

 private:
  mutable std::mutex mu_;  // guards the maps during static initialisation
  std::unordered_map<std::string, FunctionEntry> functions_;
  std::unordered_map<std::string, FactoryEntry> factories_;
  std::unordered_map<std::string, MethodEntry> methods_;
  std::unordered_map<const void*, std::string> names_;
};

/// Demangled name of a type, for errors and class keys.
std::string demangle(const char* mangled);

template <typename T>
std::string class_key() {
  return demangle(typeid(T).name());
}

/// Names of member-function pointers of one exact type. Member pointers cannot be hashed,
/// so lookup compares; a class has few methods.
template <typename M>
std::vector<std::pair<M, std::string>>& method_names() {
  static std::vector<std::pair<M, std::string>> table;
  return table;
}

template <typename M>
std::string method_name_of(M method) {
  for (const auto& [m, name] : method_names<M>())
    if (m == method) return name;
  return {};
}

/// Decodes argument `I` of a call into its parameter type.
template <typename Arg>
std::decay_t<Arg> decode_arg(const ArgView& view) {
  return decode_from<std::decay_t<Arg>>(view.data, view.size);
}

template <typename R>
void write_result(ResultSink& sink, const R& value) {
  size_t n = encoded_size(value);
  Writer w(sink.reserve(n));
  encode(w, value);
}

inline void write_void_result(ResultSink& sink) {
  Writer w(sink.reserve(1));
  w.nil();
}

template <typename... Args, size_t... I>
auto decode_args([[maybe_unused]] std::span<const ArgView> args, std::index_sequence<I...>) {
  return std::tuple<std::decay_t<Args>...>(decode_arg<Args>(args[I])...);
}

template <typename R, typename... Args>
void register_function(const std::string& name, R (*fn)(Args...)) {
  if constexpr (std::is_pointer_v<R> && std::is_class_v<std::remove_pointer_t<R>>) {
    // A function returning T* is an actor factory.
    using T = std::remove_pointer_t<R>;
    FactoryEntry e;
    e.name = name;
    e.class_key = class_key<T>();
    e.arity = sizeof...(Args);
    e.create = [fn](std::span<const ArgView> args) -> std::shared_ptr<void> {
      auto tuple = decode_args<Args...>(args, std::index_sequence_for<Args...>{});
      T* instance = std::apply(fn, std::move(tuple));
      if (instance == nullptr) throw Error("actor factory returned null");
      return std::shared_ptr<void>(instance, [](void* p) { delete static_cast<T*>(p); });
    };
    Registry::instance().add_factory(reinterpret_cast<const void*>(fn), std::move(e));
  } else {
    FunctionEntry e;
    e.name = name;
    e.arity = sizeof...(Args);
    e.invoke = [fn](std::span<const ArgView> args, ResultSink& sink) {
      auto tuple = decode_args<Args...>(args, std::index_sequence_for<Args...>{});
      if constexpr (std::is_void_v<R>) {
        std::apply(fn, std::move(tuple));
        write_void_result(sink);
      } else {
        write_result(sink, std::apply(fn, std::move(tuple)));
      }
    };
    Registry::instance().add_function(reinterpret_cast<const void*>(fn), std::move(e));
  }
}

template <typename T, typename M, typename R, typename... Args>
void register_method_impl(const std::string& name, M method) {
  method_names<M>().emplace_back(method, name);
  MethodEntry e;
  e.name = name;
  e.class_key = class_key<T>();
  e.arity = sizeof...(Args);
  e.invoke = [method](void* self, std::span<const ArgView> args, ResultSink& sink) {
    auto tuple = decode_args<Args...>(args, std::index_sequence_for<Args...>{});
    T* obj = static_cast<T*>(self);
    auto call = [&](auto&&... a) -> decltype(auto) { return (obj->*method)(std::forward<decltype(a)>(a)...); };
    if constexpr (std::is_void_v<R>) {
      std::apply(call, std::move(tuple));
      write_void_result(sink);
    } else {
      write_result(sink, std::apply(call, std::move(tuple)));
    }
  };
  Registry::instance().add_method(std::move(e));
}

template <typename T, typename R, typename... Args>
void register_function(const std::string& name, R (T::*method)(Args...)) {
  register_method_impl<T, decltype(method), R, Args...>(name, method);
}

template <typename T, typename R, typename... Args>
void register_function(const std::string& name, R (T::*method)(Args...) const) {
  register_method_impl<T, decltype(method), R, Args...>(name, method);
}

/// Splits the stringified macro arguments ("f, &C::m") into clean names ("f", "C::m").
std::vector<std::string> split_remote_names(std::string_view list);

template <typename... Fs>
bool register_remotes(const char* stringified, Fs... fns) {
  std::vector<std::string> names = split_remote_names(stringified);
  size_t i = 0;
  (register_function(names.at(i++), fns), ...);
  return true;
}

}  // namespace gantry::detail

#define GANTRY_DETAIL_CAT2(a, b) a##b
#define GANTRY_DETAIL_CAT(a, b) GANTRY_DETAIL_CAT2(a, b)

/// Registers remote functions, actor factories (functions returning `T*`) and actor
/// methods, at namespace scope:
///
///     GANTRY_REMOTE(fibonacci);
///     GANTRY_REMOTE(Counter::create, &Counter::increment, &Counter::value);
#define GANTRY_REMOTE(...)                                                           \
  [[maybe_unused]] static const bool GANTRY_DETAIL_CAT(gantry_remote_, __COUNTER__) = \
      ::gantry::detail::register_remotes(#__VA_ARGS__, __VA_ARGS__)
