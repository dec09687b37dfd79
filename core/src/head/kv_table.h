#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace gantry::internal {

/// The head's key-value store: byte values under (namespace, key), counters stored as
/// decimal text, and waiters that fire when their key is written. Namespaces are a job id
/// (dropped with the job) or "" for the cluster's. Not thread-safe: the head guards it
/// with one mutex, and runs the waiters this returns after releasing it.
class KvTable {
 public:
  /// The largest value (and key) the store takes.
  static constexpr size_t kMaxValueBytes = 64u << 20;
  static constexpr size_t kMaxKeyBytes = 4096;

  /// Called with the key's value once it exists; with nullptr and a reason when the wait
  /// ends without one (its namespace dropped, the head stopping).
  using Waiter = std::function<void(const std::string* value, const std::string& reason)>;
  /// Waiters to run once the lock is released, with their value.
  struct Fired {
    Waiter waiter;
    std::optional<std::string> value;
    std::string reason;
  };

  /// Stores `value` unless the key exists and `overwrite` is false. Returns whether it
  /// stored; waiters of the key go to `fired`.
  bool put(const std::string& ns, const std::string& key, std::string value, bool overwrite,
           std::vector<Fired>& fired);
  std::optional<std::string> get(const std::string& ns, const std::string& key) const;
  /// Whether the key existed.
  bool del(const std::string& ns, const std::string& key);
  /// Adds `delta` to the counter at `key` (absent counts as 0) and returns the new value.
  /// Throws std::invalid_argument when the key holds something other than a decimal
  /// integer, std::overflow_error when the sum leaves int64.
  int64_t add(const std::string& ns, const std::string& key, int64_t delta, std::vector<Fired>& fired);
  /// Keys of `ns` that start with `prefix`, sorted.
  std::vector<std::string> keys(const std::string& ns, const std::string& prefix) const;
  /// Registers a waiter for a key that does not exist yet (call `get` first); returns its
  /// id for remove_waiter.
  uint64_t add_waiter(const std::string& ns, const std::string& key, Waiter waiter);
  /// Whether the waiter was still registered (and is now removed, not to fire).
  bool remove_waiter(uint64_t id);
  /// Removes every key of `ns`; its waiters fail with `reason`.
  void drop_namespace(const std::string& ns, const std::string& reason, std::vector<Fired>& fired);
  /// Fails every waiter with `reason`.
  void fail_all_waiters(const std::string& reason, std::vector<Fired>& fired);

  size_t size() const { return values_.size(); }

 private:
  using Key = std::pair<std::string, std::string>;  // (namespace, key)
  void fire_locked(const Key& key, const std::string& value, std::vector<Fired>& fired);

  std::map<Key, std::string> values_;
  struct Waiting {
    Key key;
    Waiter waiter;
  };
  std::map<uint64_t, Waiting> waiters_;
  std::multimap<Key, uint64_t> waiters_by_key_;
  uint64_t next_waiter_ = 1;
};

/// Runs fired waiters (outside the lock that guards their table).
void run_fired(std::vector<KvTable::Fired>& fired);

}  // namespace gantry::internal
