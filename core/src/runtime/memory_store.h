#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "gantry/common.pb.h"
#include "gantry/worker.pb.h"
#include "gantry/ids.h"

namespace gantry::internal {

/// An object's value as its owner holds it: inline bytes, a shared-memory location, or
/// an error. Immutable once stored, shared by readers without copying.
using ValuePtr = std::shared_ptr<const proto::ObjectValue>;

/// Puts a ready owned value into a call argument in place of its reference: its
/// shared-memory location, or its bytes when under `inline_threshold`. Error values and
/// larger inline values are left as references (the callee asks the owner).
void inline_ready_value(proto::TaskArg& arg, const proto::ObjectValue& value, size_t inline_threshold);

/// The owner's table of its objects: pending until a task result or put arrives, then
/// ready. Thread-safe (one mutex); callbacks run without the lock held.
class MemoryStore {
 public:
  /// `spin_budget`: how long spin_for() may spin; zero turns spinning off.
  explicit MemoryStore(std::chrono::microseconds spin_budget = std::chrono::microseconds(50))
      : spin_budget_(spin_budget) {}

  using Deadline = std::optional<std::chrono::steady_clock::time_point>;
  using ReadyCallback = std::function<void(const ValuePtr&)>;

  /// Declares an object whose value will arrive later.
  void add_pending(const ObjectId& id);
  /// Stores a value. Returns false, storing nothing, when the id is unknown (it was freed
  /// while its task ran) so the caller can release what the value holds.
  bool put(const ObjectId& id, ValuePtr value);
  /// Stores a value for a new id (put()).
  void put_new(const ObjectId& id, ValuePtr value);
  /// The value if ready; null when pending or unknown.
  ValuePtr get_if_ready(const ObjectId& id) const;
  bool contains(const ObjectId& id) const;
  /// Waits for the value. Returns null at the deadline; throws gantry::ObjectLostError when
  /// the id is unknown or freed.
  ValuePtr wait(const ObjectId& id, Deadline deadline);
  /// For a caller about to sleep in wait(): when `id` is this owner's only pending
  /// object (a lone synchronous call), spins up to the spin budget for it and returns
  /// its value if it arrived, else null. A short call answers in less time than a
  /// sleeping thread takes to be woken on another core; with more work outstanding the
  /// cores are busy with it, so it returns null at once. A thread whose spins keep
  /// running out skips spinning for a growing number of calls (up to 64), so long
  /// calls do not pay for it.
  ValuePtr spin_for(const ObjectId& id);
  /// Which ids are ready once `num_ready` are or the deadline passes. Unknown ids count as
  /// ready (a get on them throws at once).
  std::vector<bool> wait_many(const std::vector<ObjectId>& ids, size_t num_ready, Deadline deadline);
  /// Runs `callback` once the value is ready: now (on this thread) if it already is.
  /// Returns false when the id is unknown.
  bool on_ready(const ObjectId& id, ReadyCallback callback);
  /// Forgets the object and returns its value, if it had one.
  /// Makes a ready object pending again (its value is being rebuilt); false if unknown.
  bool reset_pending(const ObjectId& id);
  ValuePtr erase(const ObjectId& id);
  size_t size() const;
  /// Wakes every waiter and makes later waits throw gantry::Error (shutdown).
  void close();

 private:
  struct Entry {
    ValuePtr value;  // null while pending
    std::vector<ReadyCallback> callbacks;
  };

  // Needs mu_ held: a pending entry got its value or left (or the reverse).
  void count_pending_locked(int delta);

  const std::chrono::microseconds spin_budget_;
  mutable std::mutex mu_;  // guards the members below, except version_
  std::condition_variable cv_;
  std::unordered_map<ObjectId, Entry> entries_;
  size_t pending_ = 0;  // entries without a value
  bool closed_ = false;
  // Bumped under mu_ whenever a value arrives or the store closes, so that spinners can
  // watch for a change without taking the lock.
  std::atomic<uint64_t> version_{0};
};

}  // namespace gantry::internal
