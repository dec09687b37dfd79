#pragma once

// One program run as a child process of this one, with its output read line by line:
// what a `gantry train launch` worker runs for its rank.

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace gantry::train::launch {

/// How a program ended.
struct ExitStatus {
  /// Its exit code when it exited, else -1.
  int code = -1;
  /// The signal that ended it, else 0.
  int signal = 0;

  bool success() const { return signal == 0 && code == 0; }
  /// "exited with status 3", "was killed by signal 9 (SIGKILL)".
  std::string describe() const;
};

/// A program started in a process group of its own, stdin from /dev/null, stdout and
/// stderr on pipes that a thread of this object reads and hands over line by line.
///
/// It does not outlive this process: the program gets SIGKILL when the thread that started
/// it (this object's) goes, which it does only with this object or with the process. When
/// the program exits, whatever it left running in its process group is killed too.
///
///     ChildProcess child({.path = "/bin/sh", .argv = {"sh", "-c", "echo hi"}},
///                        [](int stream, std::string line) { std::cout << line << "\n"; },
///                        [](const ExitStatus& s) {});
///     ExitStatus s = *child.wait_for(std::chrono::seconds(5));
///
/// Thread-safe: terminate, wait_for and pid may be called from any thread.
class ChildProcess {
 public:
  struct Spec {
    /// The executable (absolute, or relative to the current directory; no PATH search).
    std::string path;
    /// argv, including argv[0].
    std::vector<std::string> argv;
    /// NAME=VALUE strings: its whole environment.
    std::vector<std::string> environment;
    /// Where it runs; empty: this process's current directory. If it cannot enter the
    /// directory, it runs here and says so on its stderr.
    std::string working_dir;
  };
  static constexpr int kStdout = 1;
  static constexpr int kStderr = 2;
  /// Called on this object's thread with each line (without its '\n') and the stream it
  /// came on (kStdout, kStderr), in the order read from each stream. A line longer than
  /// 64 KiB arrives in pieces. It may block to slow the program down (its pipe fills), but
  /// must return once the program is being terminated.
  using LineSink = std::function<void(int stream, std::string line)>;
  /// Called on this object's thread once, after the last line.
  using ExitSink = std::function<void(const ExitStatus&)>;

  /// Starts the program. Throws std::runtime_error naming the program and the reason when
  /// it cannot be executed (missing, not executable).
  ChildProcess(Spec spec, LineSink on_line, ExitSink on_exit);
  /// Kills the program's process group if it still runs, and waits for the thread.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }

  /// Stops the program: SIGTERM to its process group, SIGKILL after `grace` if it has not
  /// exited by then. Returns once it was reaped and its output handed over.
  ExitStatus terminate(std::chrono::milliseconds grace);

  /// Waits up to `timeout` for the program to end and its output to be handed over.
  std::optional<ExitStatus> wait_for(std::chrono::milliseconds timeout);

 private:
  void supervise();
  /// Sends `sig` to the program's process group while its leader is not reaped (so the
  /// group id cannot belong to anyone else yet). Needs mu_ held.
  void signal_group_locked(int sig);

  Spec spec_;
  LineSink on_line_;
  ExitSink on_exit_;
  pid_t pid_ = -1;  // written by the thread before the constructor returns

  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;     // guarded by mu_: the spawn finished (pid_ or start_error_ set)
  std::string start_error_;  // guarded by mu_
  bool reaped_ = false;      // guarded by mu_
  bool finished_ = false;    // guarded by mu_: output handed over and on_exit called
  ExitStatus status_;        // guarded by mu_
  std::thread thread_;       // started last, joined by the destructor
};

}  // namespace gantry::train::launch
