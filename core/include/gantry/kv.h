#pragma once

/// gantry::kv: the head's key-value store, for rendezvous and small shared state.
///
///     gantry::kv::put("run-7/addr", "10.0.0.5:29500");
///     auto addr = gantry::kv::wait("run-7/addr", std::chrono::seconds(30));  // on another node
///     int64_t n = gantry::kv::add("run-7/arrived", 1);
///
/// Keys live in the calling job's namespace, shared by its driver, tasks and actors on
/// every node, and are removed when the job ends. `{.cluster = true}` uses the cluster's
/// namespace instead, shared by every job and kept until deleted (or the head stops).
/// Every call is one round trip to the head and throws gantry::Error when the head cannot
/// be reached. Keys must not be empty (at most 4096 bytes); values are at most 64 MiB.
/// All functions are thread-safe.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gantry::kv {

/// Which namespace a call uses.
struct Scope {
  /// The cluster's namespace instead of the job's.
  bool cluster = false;
};

/// How `put` writes.
struct PutOptions {
  /// Replace an existing value; with false, an existing key keeps its value.
  bool overwrite = true;
  bool cluster = false;
};

/// The largest value `put` takes.
inline constexpr size_t kMaxValueBytes = 64u << 20;

/// Stores `value` under `key`. Returns whether it was written (false only when the key
/// exists and `overwrite` is false). Wakes every `wait` on the key.
bool put(const std::string& key, std::string_view value, PutOptions options = {});

/// The value of `key`, or nullopt when it is not set.
std::optional<std::string> get(const std::string& key, Scope scope = {});

/// Blocks until `key` is set and returns its value, or nullopt when `timeout` passes
/// first (or the job's namespace is dropped). The head answers when the key is written:
/// neither side polls.
std::optional<std::string> wait(const std::string& key, std::chrono::milliseconds timeout, Scope scope = {});

/// Removes `key`; returns whether it existed.
bool del(const std::string& key, Scope scope = {});

/// Adds `delta` to the counter at `key` (an absent key counts as 0) atomically and
/// returns the new value. A counter reads back through `get` as decimal text. Throws
/// gantry::Error when the key holds something else, or the sum overflows.
int64_t add(const std::string& key, int64_t delta, Scope scope = {});

/// The keys that start with `prefix` (all keys for ""), sorted.
std::vector<std::string> keys(const std::string& prefix = "", Scope scope = {});

}  // namespace gantry::kv
