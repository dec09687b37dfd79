#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gantry/ids.h"
#include "gantry/worker.pb.h"

namespace gantry::internal {

/// What ran in one worker process: counts per function, the last `capacity` executions
/// with their times (for `gantry timeline`) and the last failures with their errors (for
/// the dashboard). Recording costs two short critical sections per task. Thread-safe
/// (one mutex).
class TaskEventLog {
 public:
  explicit TaskEventLog(size_t capacity = 10000, size_t failures_kept = 100);

  /// A task starts; returns the token `ended` takes. `actor_call`: a method of the actor
  /// this worker hosts (counted apart as well: the worker may have run tasks before).
  uint64_t started(const TaskId& id, const std::string& name, int attempt, bool actor_call = false);
  /// The task of `token` ended; `error` is its error, or null when it returned a value.
  void ended(uint64_t token, const proto::ErrorInfo* error);
  /// Fills `out` (counts, running and ended executions, failures) as `req` asks.
  void describe(const proto::TaskEventsRequest& req, proto::TaskEvents* out) const;

  /// Wall-clock Unix microseconds.
  static uint64_t now_us();

 private:
  struct Execution {
    TaskId id;
    std::string name;
    uint64_t start_us = 0;
    uint64_t end_us = 0;
    int attempt = 0;
    bool failed = false;
    bool actor_call = false;
  };
  struct Counts {
    int64_t running = 0;
    int64_t finished = 0;
    int64_t failed = 0;
    void end(bool with_error) {
      --running;
      ++(with_error ? failed : finished);
    }
  };

  const size_t capacity_;
  const size_t failures_kept_;
  mutable std::mutex mu_;  // guards everything below
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, Execution> running_;
  std::unordered_map<std::string, Counts> counts_;
  Counts actor_calls_;
  std::vector<Execution> ended_;  // a ring of the last `capacity_`
  size_t ended_next_ = 0;
  uint64_t ended_total_ = 0;
  std::vector<proto::TaskFailure> failures_;  // a ring of the last `failures_kept_`
  size_t failures_next_ = 0;
};

}  // namespace gantry::internal
