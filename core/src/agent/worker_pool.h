#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gantry/ids.h"

namespace gantry::internal {

/// How the agent starts a job's worker: the job's own executable in worker mode.
struct WorkerLaunchSpec {
  std::string executable;
  std::vector<std::string> argv;                   // argv[0] included
  std::map<std::string, std::string> environment;  // the job's GANTRY_* settings
};

/// Starts worker processes and reports their exits. Thread-safe (one mutex); the exit
/// callback runs on the pool's monitor thread without the pool's lock held. The monitor
/// sleeps until a worker exits (a pidfd per worker, Linux 5.3 and later), or looks every
/// 5 ms where pidfds are not to be had.
class WorkerPool {
 public:
  using ExitCallback = std::function<void(const UniqueId& worker_id, pid_t pid, const std::string& reason)>;

  /// `node_environment`: settings every worker of this node gets (agent address, session
  /// directory, token), under the job's own.
  WorkerPool(std::map<std::string, std::string> node_environment, ExitCallback on_exit);
  ~WorkerPool();

  /// Starts a worker of the job `spec` describes that will see exactly `gpu_ids`
  /// (CUDA_VISIBLE_DEVICES). Returns its id; throws gantry::Error when the process cannot
  /// be started.
  UniqueId start(const WorkerLaunchSpec& spec, const std::vector<int>& gpu_ids);
  /// Changes one node-wide setting for workers started from now on.
  void set_node_setting(const std::string& name, const std::string& value);
  /// Sends `signal` to the worker, if it is still running.
  void signal(const UniqueId& worker_id, int signal);
  /// Terminates every worker: SIGTERM, then SIGKILL after `grace`.
  void stop_all(std::chrono::milliseconds grace);
  size_t num_running() const;

 private:
  void monitor_loop();
  /// Wakes the monitor thread (a new worker to watch, or the pool stopping).
  void wake_monitor();

  std::map<std::string, std::string> node_environment_;  // guarded by mu_
  const ExitCallback on_exit_;
  struct Child {
    UniqueId id;
    int pidfd = -1;  // readable once the process exits; -1 where none could be had
  };
  mutable std::mutex mu_;  // guards running_ and node_environment_
  std::map<pid_t, Child> running_;
  int wake_fd_ = -1;  // an eventfd the monitor waits on besides the pidfds; -1 if none
  std::atomic<bool> stopping_{false};
  std::thread monitor_;
};

/// Describes a wait status: "exit code 3", "killed by signal 9 (SIGKILL)".
std::string describe_exit(int status);

}  // namespace gantry::internal
