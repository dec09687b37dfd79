#pragma once

#include <string>
#include <utility>
#include <vector>

#include "gantry/detail/registry.h"
#include "gantry/object_ref.h"

namespace gantry {

namespace detail {
template <typename Param, typename A>
EncodedArg encode_arg(A&& arg);
template <typename... Params, typename... As>
std::vector<EncodedArg> encode_args(As&&... args);
std::string require_method_name(const std::string& name, const char* what);
void encode_actor(Writer& w, const ActorId& id);
ActorId decode_actor(Reader& r);
}  // namespace detail

/// Calls one method of an actor: `handle.task(&Counter::increment).remote()`.
template <typename T, typename R, typename... Params>
class ActorTaskCaller {
 public:
  ActorTaskCaller(ActorId actor, std::string method) : actor_(actor), method_(std::move(method)) {}

  /// Sends the call; calls from one caller run in the order they were made (with
  /// ActorOptions::max_concurrency > 1 they start in that order and may overlap).
  template <typename... As>
  ObjectRef<R> remote(As&&... args) const {
    static_assert(sizeof...(As) == sizeof...(Params), "wrong number of arguments for this actor method");
    auto encoded = detail::encode_args<Params...>(std::forward<As>(args)...);
    ObjectId id = detail::runtime().submit_actor_task(actor_, method_, std::move(encoded));
    return ObjectRef<R>(std::make_shared<detail::RefState>(id, detail::runtime().address(),
                                                           detail::RefState::Adopt{}));
  }

 private:
  ActorId actor_;
  std::string method_;
};

/// A handle to an actor of class `T`. Copyable, and can be passed to tasks and other actors.
template <typename T>
class ActorHandle {
 public:
  ActorHandle() = default;
  explicit ActorHandle(ActorId id) : id_(id) {}

  /// Prepares a call of `method` (registered with GANTRY_REMOTE).
  template <typename R, typename... Params>
  ActorTaskCaller<T, R, Params...> task(R (T::*method)(Params...)) const {
    return {id_, detail::require_method_name(detail::method_name_of(method), "actor method")};
  }
  template <typename R, typename... Params>
  ActorTaskCaller<T, R, Params...> task(R (T::*method)(Params...) const) const {
    return {id_, detail::require_method_name(detail::method_name_of(method), "actor method")};
  }

  const ActorId& id() const { return id_; }

 private:
  ActorId id_;
};

template <typename T>
struct Codec<ActorHandle<T>> {
  static void encode(Writer& w, const ActorHandle<T>& h) { detail::encode_actor(w, h.id()); }
  static void decode(Reader& r, ActorHandle<T>& h) { h = ActorHandle<T>(detail::decode_actor(r)); }
};

}  // namespace gantry
