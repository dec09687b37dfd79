#pragma once

// The driver side of `gantry train launch`: places a group of RankWorker actors, assigns
// ranks, starts the program in each, prints its output by rank and restarts the group
// when a rank fails. Needs gantry::init first.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "gantry/gantry.h"
#include "launch_options.h"
#include "rank_layout.h"
#include "rank_worker.h"

namespace gantry::train::launch {

/// Runs one launch as a small state machine; every transition is printed on stderr as a
/// line starting "gantry train launch: ":
///
///     placing ──> starting ──> running ──> succeeded
///        ^                        │
///        └────── restarting <─────┤ a rank failed, restarts left
///                                 └──> failed: none left (or the group can never fit)
///     interrupted: by SIGINT or SIGTERM, from any state
///
/// Not thread-safe: one thread calls run().
class Launcher {
 public:
  enum class State { kPlacing, kStarting, kRunning, kRestarting, kSucceeded, kFailed, kInterrupted };

  /// `program` is the program's absolute path (options.command[0] as resolved);
  /// `working_dir` is where the programs run. `stop_signal` is polled and returns the
  /// signal that asks the launch to stop (SIGINT, SIGTERM), or 0.
  Launcher(LaunchOptions options, std::string program, std::string working_dir, std::function<int()> stop_signal);

  /// Runs the group to its end and returns the launcher's exit code: 0 when every rank
  /// exited 0; 1 when a rank failed with no restarts left, or the cluster can never hold
  /// the group; 128 + the signal when stopped. Every program it started is ended first.
  int run();

  State state() const { return state_; }

 private:
  /// One worker of the current attempt.
  struct Worker {
    ActorHandle<RankWorker> actor;
    WorkerPlace place;
    RankAssignment rank;
    bool assigned = false;  // place and rank are known
    bool finished = false;  // its program exited 0, or it failed
    std::optional<ObjectRef<RankProgress>> pending_poll;
  };
  /// How an attempt ended.
  struct Outcome {
    State state = State::kSucceeded;  // kSucceeded, kFailed or kInterrupted
    std::string failure;              // for kFailed: which rank, where, what
    bool retryable = true;            // false: restarting cannot help (the group can never fit)
  };

  Outcome run_attempt(int restart_count);
  /// Starts the actors in the group's bundles, assigns ranks by node, finds MASTER_PORT
  /// and starts each rank's program. Throws AttemptFailed naming the worker that failed.
  void start_ranks(std::vector<Worker>& workers, const PlacementGroup& group, int restart_count);
  /// Reserves the bundles; with --min-workers below --workers, as many as fit but at
  /// least the minimum. Throws Interrupted, or Error when the group can never fit.
  PlacementGroup place_group();
  /// Runs the started ranks until all exit 0, one fails, or a stop is asked for.
  Outcome monitor(std::vector<Worker>& workers);
  /// Stops every program and actor of the attempt and removes its placement group,
  /// printing what the programs wrote last.
  void tear_down(std::vector<Worker>& workers, const PlacementGroup& group);

  void transition(State next, const std::string& detail);
  void print_lines(const Worker& worker, size_t index, const std::vector<OutputLine>& lines);
  std::string where(const Worker& worker) const;
  std::string rank_name(const Worker& worker) const;
  /// Throws Interrupted when a stop was asked for.
  void check_stop();
  template <typename T>
  T await(const ObjectRef<T>& ref, std::chrono::milliseconds limit, const std::string& what);

  LaunchOptions options_;
  std::string program_;
  std::string working_dir_;
  std::function<int()> stop_signal_;
  std::string run_id_;
  State state_ = State::kPlacing;
  int placement_attempts_ = 0;  // names each attempt's placement group uniquely
};

/// A state's name for the transition lines: "placing", "running", ...
const char* to_string(Launcher::State state);

}  // namespace gantry::train::launch
