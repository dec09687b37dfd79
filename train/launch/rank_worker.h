#pragma once

// The actor behind each rank of `gantry train launch`: it says where it runs, finds a
// free port, runs the rank's program as its child and hands the program's output and
// exit status to the launcher, which polls it.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "child_process.h"
#include "gantry/gantry.h"

namespace gantry::train::launch {

/// Where a worker runs.
struct WorkerPlace {
  std::string node_id;  ///< hex, as gantry::nodes() gives it
  std::string node_ip;  ///< the address other nodes reach this node at
  std::string hostname;
  std::string cuda_visible_devices;  ///< the worker's own devices ("" without GPUs)
  int pid = 0;
  GANTRY_FIELDS(node_id, node_ip, hostname, cuda_visible_devices, pid);
};

/// The program a worker runs for its rank.
struct ProgramSpec {
  std::string path;  ///< absolute
  std::vector<std::string> argv;
  /// Variables set over the worker's own environment (which loses its GANTRY_* ones).
  std::map<std::string, std::string> environment;
  std::string working_dir;
  GANTRY_FIELDS(path, argv, environment, working_dir);
};

/// One line the program wrote.
struct OutputLine {
  int stream = ChildProcess::kStdout;  ///< ChildProcess::kStdout or kStderr
  std::string text;
  GANTRY_FIELDS(stream, text);
};

/// What happened since the last poll: new lines, in order, and once every line has been
/// handed over, how the program ended.
struct RankProgress {
  std::vector<OutputLine> lines;
  bool exited = false;
  int exit_code = -1;
  int exit_signal = 0;
  GANTRY_FIELDS(lines, exited, exit_code, exit_signal);

  ExitStatus status() const { return {exit_code, exit_signal}; }
};

/// A rank's worker. Create it with max_concurrency = 2, so that `stop` runs while a
/// `poll` waits. Thread-safe.
class RankWorker {
 public:
  /// The actor factory.
  static RankWorker* create();
  /// Kills the program if it still runs.
  ~RankWorker();

  WorkerPlace place() const;
  /// A TCP port free on this node a moment ago (bound on every address, then released):
  /// rank 0's MASTER_PORT.
  int free_port() const;
  /// Starts the program; throws when it cannot be executed here (the message names the
  /// path) or when a program was already started.
  void start(ProgramSpec spec);
  /// Returns the lines written since the last poll, waiting up to `wait_ms` for one when
  /// there is none yet; `exited` is set in the result that hands over the last line.
  RankProgress poll(int wait_ms);
  /// Terminates the program (SIGTERM to its process group, SIGKILL after `grace_ms`) and
  /// returns what it wrote since the last poll and how it ended.
  RankProgress stop(int grace_ms);

 private:
  explicit RankWorker(std::map<std::string, std::string> node_env);
  void add_line(int stream, std::string text);  // on the program's reader thread
  RankProgress take_locked();                   // needs mu_ held

  /// The worker's environment, read once when the actor starts.
  const std::map<std::string, std::string> node_env_;

  std::mutex control_mu_;                // serialises start and stop
  std::unique_ptr<ChildProcess> child_;  // guarded by control_mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<OutputLine> lines_;    // guarded by mu_
  size_t buffered_bytes_ = 0;       // guarded by mu_
  bool stopping_ = false;           // guarded by mu_
  std::optional<ExitStatus> exit_;  // guarded by mu_
};

}  // namespace gantry::train::launch
