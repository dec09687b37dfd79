#pragma once

// The actor that runs trials, and what the Tuner's driver and it send each other.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gantry/codec.h"
#include "gantry/tune/checkpoint.h"
#include "gantry/tune/trial_context.h"

namespace gantry::tune::detail {

/// A checkpoint in flight (values as JSON text, files by relative path).
struct CheckpointData {
  bool present = false;
  std::string values_json;
  std::map<std::string, std::string> files;
  GANTRY_FIELDS(present, values_json, files);

  static CheckpointData of(const std::optional<Checkpoint>& checkpoint);
  std::optional<Checkpoint> to_checkpoint() const;
};

/// Everything a runner needs to run one trial.
struct TrialStart {
  int64_t run = 0;  ///< the driver's number for this run of the trial (fences stale calls)
  std::string trainable;
  std::string trial_id;
  std::string trial_name;
  std::string experiment;
  std::string config_json;
  std::string spec_json;  ///< TrialSpec::spec: what the trainable needs beyond the config
  int64_t iteration = 0;  ///< reports made before (the checkpoint's training_iteration)
  CheckpointData checkpoint;
  GANTRY_FIELDS(run, trainable, trial_id, trial_name, experiment, config_json, spec_json, iteration, checkpoint);
};

/// What `next` returns: a report to decide on, the end of the run, or nothing yet.
struct TrialEvent {
  enum Kind : int { kNothing = 0, kReport = 1, kEnded = 2 };
  int kind = kNothing;
  /// MessagePack, not JSON text: a NaN (a diverged loss) must reach the scheduler as NaN.
  std::string metrics_msgpack;
  double time_this_iter_s = 0;
  CheckpointData checkpoint;
  GANTRY_FIELDS(kind, metrics_msgpack, time_this_iter_s, checkpoint);
};

/// Where a runner lives.
struct RunnerInfo {
  std::string node_id;
  std::string node_ip;
  int pid = 0;
  std::vector<int> gpu_ids;
  GANTRY_FIELDS(node_id, node_ip, pid, gpu_ids);
};

/// The driver's answer to a report.
enum Reply : int { kNoReply = 0, kContinue = 1, kStopRun = 2 };

/// A trial actor (max_concurrency 2): `run` runs a trainable to its end on one thread
/// while the driver's `next` calls, on the other, collect its reports one at a time and
/// carry the decision on each. The trainable waits in `report` until that decision comes,
/// so a stopped trial never runs past the report it was stopped at. Reused for trial
/// after trial; `run` numbers fence off calls meant for an earlier trial. Thread-safe.
class TrialRunner {
 public:
  static TrialRunner* create();

  RunnerInfo info();
  /// Runs the trial to its end: "finished" when the trainable returned, "stopped" when a
  /// report was answered with stop. Rethrows what the trainable threw.
  std::string run(TrialStart start);
  /// Delivers `reply` to the report of run `run` waiting for one, then waits up to
  /// `wait_ms` for that run's next report or end.
  TrialEvent next(int64_t run, int reply, int64_t wait_ms);

  /// Called by the trainable's TrialContext (on the `run` thread).
  void report(Json metrics, std::optional<Checkpoint> checkpoint);

 private:
  std::mutex mu_;  // guards everything below
  std::condition_variable changed_;
  int64_t run_ = 0;
  bool running_ = false;
  std::optional<TrialEvent> unsent_;  ///< a report or the end, not yet collected by `next`
  bool waiting_for_reply_ = false;
  int reply_ = kNoReply;
  std::chrono::steady_clock::time_point last_report_{};
};

}  // namespace gantry::tune::detail
