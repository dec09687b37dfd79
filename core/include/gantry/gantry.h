#pragma once

/// gantry: tasks, actors and objects on a cluster, from C++.
///
///     int64_t fibonacci(int n);
///     GANTRY_REMOTE(fibonacci);
///
///     int main(int argc, char** argv) {
///       gantry::init(argc, argv);          // workers run tasks here and never return
///       auto r = gantry::task(fibonacci).remote(30);
///       std::cout << r.get() << "\n";
///       gantry::shutdown();
///     }

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gantry/actor_handle.h"
#include "gantry/codec.h"
#include "gantry/detail/registry.h"
#include "gantry/errors.h"
#include "gantry/ids.h"
#include "gantry/kv.h"
#include "gantry/object_ref.h"
#include "gantry/options.h"
#include "gantry/placement_group.h"

namespace gantry {

/// Starts the embedded local cluster (or joins `options.address`). In a worker process
/// (the same executable started by the node agent) it serves tasks and never returns.
/// Call it early in `main`, before threads are started. Not thread-safe.
void init(int argc, char** argv, InitOptions options = {});
void init(InitOptions options = {});
/// Stops this driver's workers and the embedded cluster. Safe to call twice.
void shutdown();
bool is_initialized();

/// The embedded cluster's dashboard ("http://127.0.0.1:8265"), or "" when it serves none
/// (InitOptions::dashboard) or this driver joined a cluster. Requests need the cluster
/// token; `dashboard_login_url()` gives a one-time link that signs a browser in.
std::string dashboard_url();
/// A one-time login link for the embedded dashboard, valid for `valid`; "" without one.
std::string dashboard_login_url(std::chrono::seconds valid = std::chrono::minutes(10));

/// Ids of the GPUs assigned to the running task or actor (empty when it asked for none).
std::vector<int> get_gpu_ids();
/// Node, worker, job and assigned resources of the running task or actor, or the driver.
RuntimeContext runtime_context();
/// The cluster's nodes, alive and dead, in the order they joined (the embedded cluster
/// has one). Their ids are what SchedulingStrategy::node_affinity takes.
std::vector<NodeInfo> nodes();
/// The resources of the cluster's live nodes, summed per kind ({"CPU": 8, "GPU": 2, ...}).
std::map<std::string, double> cluster_resources();
/// What of them is free now, as each live node reports it (a node that does not answer
/// counts with the head's last view of it).
std::map<std::string, double> available_resources();

namespace detail {

/// Names a registered free function or throws a clear error.
std::string require_function_name(const void* address, const char* what);

/// Encodes one call argument for parameter type `Param`: `ObjectRef`s travel as
/// references, small values inline, large values through the object store.
template <typename Param, typename A>
EncodedArg encode_arg(A&& arg) {
  using Plain = std::decay_t<A>;
  using P = std::decay_t<Param>;
  EncodedArg out;
  if constexpr (IsObjectRef<Plain>::value && !IsObjectRef<P>::value) {
    static_assert(std::is_convertible_v<typename Plain::value_type, P>,
                  "ObjectRef<T> passed where T is not convertible to the parameter type");
    if (!arg.valid()) throw Error("cannot pass an empty gantry::ObjectRef as an argument");
    if constexpr (std::is_same_v<typename Plain::value_type, P>) {
      out.ref = arg.ref_state();
    } else {
      // Converting types (say ObjectRef<int> into a double parameter) needs the value.
      return encode_arg<Param>(static_cast<P>(arg.get()));
    }
  } else {
    static_assert(std::is_constructible_v<P, A&&>,
                  "argument is not convertible to the remote function's parameter type");
    const P& value = arg;  // binds directly when A is already P
    size_t n = encoded_size(value);
    Runtime& rt = runtime();
    NestedRefCollector collect(&out.nested);
    if (n >= rt.inline_threshold()) {
      auto object = rt.create_object(n);
      Writer w(object->data());
      encode(w, value);
      ObjectId id = rt.seal_object(std::move(object));
      out.ref = std::make_shared<RefState>(id, rt.address(), RefState::Adopt{});
    } else {
      out.inline_data.resize(n);
      Writer w(reinterpret_cast<uint8_t*>(out.inline_data.data()));
      encode(w, value);
    }
  }
  return out;
}

template <typename... Params, typename... As>
std::vector<EncodedArg> encode_args(As&&... args) {
  std::vector<EncodedArg> out;
  out.reserve(sizeof...(As));
  (out.push_back(encode_arg<Params>(std::forward<As>(args))), ...);
  return out;
}

template <typename R>
ObjectRef<R> adopt_ref(const ObjectId& id) {
  return ObjectRef<R>(std::make_shared<RefState>(id, runtime().address(), RefState::Adopt{}));
}

}  // namespace detail

/// Calls a registered free function remotely: `gantry::task(f).options({...}).remote(args...)`.
template <typename R, typename... Params>
class TaskCaller {
 public:
  explicit TaskCaller(R (*fn)(Params...))
      : name_(detail::require_function_name(reinterpret_cast<const void*>(fn), "function")) {}

  /// Returns a copy with these options.
  TaskCaller options(TaskOptions options) const {
    TaskCaller copy = *this;
    copy.options_ = std::move(options);
    return copy;
  }

  /// Submits the task and returns a reference to its result at once. Arguments are
  /// values convertible to the parameters, or `ObjectRef`s of them (resolved before the
  /// function runs).
  template <typename... As>
  ObjectRef<R> remote(As&&... args) const {
    static_assert(sizeof...(As) == sizeof...(Params), "wrong number of arguments for this function");
    auto encoded = detail::encode_args<Params...>(std::forward<As>(args)...);
    return detail::adopt_ref<R>(detail::runtime().submit_task(name_, std::move(encoded), options_));
  }

 private:
  std::string name_;
  TaskOptions options_;
};

template <typename R, typename... Params>
TaskCaller<R, Params...> task(R (*fn)(Params...)) {
  return TaskCaller<R, Params...>(fn);
}

/// Creates actors of class `T` through a registered factory `T* (*)(Params...)`.
template <typename T, typename... Params>
class ActorCreator {
 public:
  explicit ActorCreator(T* (*factory)(Params...))
      : name_(detail::require_function_name(reinterpret_cast<const void*>(factory), "actor factory")) {}

  ActorCreator options(ActorOptions options) const {
    ActorCreator copy = *this;
    copy.options_ = std::move(options);
    return copy;
  }

  /// Starts the actor (asynchronously) and returns its handle at once.
  template <typename... As>
  ActorHandle<T> remote(As&&... args) const {
    static_assert(sizeof...(As) == sizeof...(Params), "wrong number of arguments for this factory");
    auto encoded = detail::encode_args<Params...>(std::forward<As>(args)...);
    return ActorHandle<T>(detail::runtime().create_actor(name_, detail::class_key<T>(),
                                                         std::move(encoded), options_));
  }

 private:
  std::string name_;
  ActorOptions options_;
};

template <typename T, typename... Params>
ActorCreator<T, Params...> actor(T* (*factory)(Params...)) {
  return ActorCreator<T, Params...>(factory);
}

/// The value of `ref`, blocking until it is ready.
template <typename T>
T get(const ObjectRef<T>& ref) {
  return ref.get();
}
template <typename T, typename Rep, typename Period>
T get(const ObjectRef<T>& ref, std::chrono::duration<Rep, Period> timeout) {
  return ref.get(timeout);
}

/// The values of `refs`, in order.
template <typename T>
std::vector<T> get(const std::vector<ObjectRef<T>>& refs) {
  std::vector<T> out;
  out.reserve(refs.size());
  for (const auto& r : refs) out.push_back(r.get());
  return out;
}

/// Stores `value` in the cluster and returns a reference to it. Large values go to the
/// node's shared-memory store and are written once.
template <typename T>
ObjectRef<std::decay_t<T>> put(const T& value) {
  using V = std::decay_t<T>;
  detail::Runtime& rt = detail::runtime();
  size_t n = encoded_size<V>(value);
  std::vector<std::shared_ptr<detail::RefState>> nested;  // refs inside live as long as it
  if (n >= rt.inline_threshold()) {
    auto object = rt.create_object(n);
    {
      detail::NestedRefCollector collect(&nested);
      Writer w(object->data());
      encode<V>(w, value);
    }
    return detail::adopt_ref<V>(rt.seal_object(std::move(object), std::move(nested)));
  }
  std::string bytes;
  {
    detail::NestedRefCollector collect(&nested);
    bytes = encode_to_string<V>(value);
  }
  return detail::adopt_ref<V>(rt.put_inline(std::move(bytes), std::move(nested)));
}

/// Refs split by readiness.
template <typename T>
struct WaitResult {
  std::vector<ObjectRef<T>> ready;
  std::vector<ObjectRef<T>> pending;
};

/// Waits until `num_returns` of `refs` are ready or `timeout` passes (no timeout: wait
/// as long as it takes), and splits them, keeping their order within each part.
///
///     auto [ready, pending] = gantry::wait(refs, 1, std::chrono::milliseconds(500));
template <typename T>
WaitResult<T> wait(const std::vector<ObjectRef<T>>& refs, size_t num_returns,
                   std::optional<std::chrono::milliseconds> timeout = std::nullopt) {
  std::vector<std::pair<ObjectId, std::string>> ids;
  ids.reserve(refs.size());
  for (const auto& r : refs) ids.emplace_back(r.id(), r.owner());
  std::vector<bool> ready = detail::runtime().wait(ids, num_returns, timeout);
  WaitResult<T> out;
  for (size_t i = 0; i < refs.size(); ++i) (ready[i] ? out.ready : out.pending).push_back(refs[i]);
  return out;
}

/// While alive in a task or actor call, tells the node that this worker is waiting (for
/// peers, a lock, I/O) rather than computing, so the CPUs its task holds may run other
/// work meanwhile, as `get`, `wait` and `kv::wait` do by themselves. Scopes nest; outside
/// a task (the driver, a thread of your own) it does nothing.
///
///     { gantry::BlockedScope waiting; peers_ready.wait(); }
class BlockedScope {
 public:
  BlockedScope() : runtime_(detail::runtime_if_alive()) {
    if (runtime_ != nullptr) runtime_->set_blocked(true);
  }
  ~BlockedScope() {
    if (runtime_ != nullptr) runtime_->set_blocked(false);
  }
  BlockedScope(const BlockedScope&) = delete;
  BlockedScope& operator=(const BlockedScope&) = delete;

 private:
  detail::Runtime* runtime_;  // not owned
};

/// A reference of any value type, for waiting on references of different types together.
/// Any `ObjectRef<T>` converts to it and keeps its object alive.
class AnyObjectRef {
 public:
  template <typename T>
  AnyObjectRef(const ObjectRef<T>& ref) : id_(ref.id()), owner_(ref.owner()), state_(ref.ref_state()) {}
  const ObjectId& id() const { return id_; }
  const std::string& owner() const { return owner_; }

 private:
  ObjectId id_;
  std::string owner_;
  std::shared_ptr<detail::RefState> state_;
};

/// Positions (into the `refs` given to `wait`) split by readiness, each in order.
struct WaitIndices {
  std::vector<size_t> ready;
  std::vector<size_t> pending;
};

/// `wait` over references of different value types: waits until `num_returns` are ready
/// or `timeout` passes, and returns their positions.
///
///     auto [ready, pending] = gantry::wait({loss_ref, checkpoint_ref, done_ref}, 1);
WaitIndices wait(const std::vector<AnyObjectRef>& refs, size_t num_returns,
                 std::optional<std::chrono::milliseconds> timeout = std::nullopt);

/// The live actor called `name`, if there is one of class `T`.
template <typename T>
std::optional<ActorHandle<T>> get_actor(const std::string& name) {
  auto id = detail::runtime().get_named_actor(name, detail::class_key<T>());
  if (!id) return std::nullopt;
  return ActorHandle<T>(*id);
}

/// Cancels the task or actor call whose result `ref` is. Only the process that submitted
/// it can (a borrowed ref is an error). Thread-safe.
///
/// - Not started yet (waiting for arguments or a worker, or queued in a worker behind
///   other calls): it never runs.
/// - Running: `gantry::is_cancelled()` turns true inside it. This is cooperative: code
///   that never asks runs to its end, and its worker stays busy until then. With
///   `{.force = true}` the task's worker process is killed instead (and replaced); the
///   task is not retried. Force is refused for actor calls (it would kill the actor; use
///   gantry::kill).
/// - Finished: nothing changes, `get()` still returns its value.
///
/// Otherwise `get()` throws gantry::TaskCancelledError from then on, at once, whatever the
/// task still returns. Cancelling a `put` object is an error.
///
///     auto r = gantry::task(train).remote(config);
///     gantry::cancel(r);  // train() sees gantry::is_cancelled() and returns early
template <typename T>
void cancel(const ObjectRef<T>& ref, CancelOptions options = {}) {
  if (!ref.valid()) throw Error("gantry::cancel on an empty gantry::ObjectRef");
  detail::runtime().cancel(ref.id(), ref.owner(), options);
}

/// True on the thread running a task or actor call once `gantry::cancel` reached it; a
/// long task polls it and returns early. False everywhere else (the driver, threads the
/// task started, tasks not cancelled).
///
///     for (int step = 0; step < steps && !gantry::is_cancelled(); ++step) train_step();
bool is_cancelled();

/// Kills the actor's process. With `no_restart` (the default) it stays dead; otherwise
/// it restarts if its `max_restarts` allows.
template <typename T>
void kill(const ActorHandle<T>& actor, bool no_restart = true) {
  detail::runtime().kill_actor(actor.id(), no_restart);
}

}  // namespace gantry
