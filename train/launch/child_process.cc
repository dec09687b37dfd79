#include "child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <stdexcept>

namespace gantry::train::launch {
namespace {

constexpr size_t kMaxLine = 64 * 1024;
// How long output is still read after the program exited, for what its last processes
// wrote (they are killed with its group at that point).
constexpr auto kDrainAfterExit = std::chrono::milliseconds(500);

/// Splits a byte stream into lines.
class LineSplitter {
 public:
  template <typename Emit>
  void feed(const char* data, size_t n, Emit&& emit) {
    for (size_t i = 0; i < n; ++i) {
      if (data[i] == '\n') {
        emit(std::move(partial_));
        partial_.clear();
      } else {
        partial_.push_back(data[i]);
        if (partial_.size() >= kMaxLine) {
          emit(std::move(partial_));
          partial_.clear();
        }
      }
    }
  }
  template <typename Emit>
  void finish(Emit&& emit) {
    if (!partial_.empty()) emit(std::move(partial_));
    partial_.clear();
  }

 private:
  std::string partial_;
};

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// In the forked child: only async-signal-safe calls until execve.
[[noreturn]] void exec_child(pid_t parent, int out_fd, int err_fd, int report_fd, const char* path, char** argv,
                             char** envp, const char* working_dir, const std::string& chdir_failed) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);  // the parent thread went before prctl took effect
  int null_fd = ::open("/dev/null", O_RDONLY);
  if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
  ::dup2(out_fd, STDOUT_FILENO);
  ::dup2(err_fd, STDERR_FILENO);
  // Everything else this process has open (sockets, files) is none of the program's business.
  if (report_fd > 3) ::close_range(3, static_cast<unsigned>(report_fd) - 1, 0);
  ::close_range(static_cast<unsigned>(report_fd) + 1, ~0U, 0);
  // The worker blocks and ignores signals for its own reasons; the program starts clean.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  if (working_dir[0] != '\0' && ::chdir(working_dir) != 0) {
    ssize_t ignored = ::write(STDERR_FILENO, chdir_failed.data(), chdir_failed.size());
    (void)ignored;
  }
  ::execve(path, argv, envp);
  int error = errno;
  ssize_t ignored = ::write(report_fd, &error, sizeof error);
  (void)ignored;
  ::_exit(127);
}

}  // namespace

std::string ExitStatus::describe() const {
  if (signal != 0) {
    const char* name = ::sigabbrev_np(signal);
    return "was killed by signal " + std::to_string(signal) + (name ? " (SIG" + std::string(name) + ")" : "");
  }
  return "exited with status " + std::to_string(code);
}

ChildProcess::ChildProcess(Spec spec, LineSink on_line, ExitSink on_exit)
    : spec_(std::move(spec)), on_line_(std::move(on_line)), on_exit_(std::move(on_exit)) {
  thread_ = std::thread([this] { supervise(); });
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return started_; });
  if (!start_error_.empty()) {
    std::string error = start_error_;
    lock.unlock();
    thread_.join();
    throw std::runtime_error(error);
  }
}

ChildProcess::~ChildProcess() {
  if (thread_.joinable()) {
    terminate(std::chrono::milliseconds(0));
    thread_.join();
  }
}

void ChildProcess::signal_group_locked(int sig) {
  if (reaped_ || pid_ <= 0) return;
  if (::kill(-pid_, sig) != 0) ::kill(pid_, sig);  // not (yet) its own group leader
}

ExitStatus ChildProcess::terminate(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    signal_group_locked(SIGTERM);
  }
  if (auto status = wait_for(grace)) return *status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    signal_group_locked(SIGKILL);
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return finished_; });
  return status_;
}

std::optional<ExitStatus> ChildProcess::wait_for(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [this] { return finished_; })) return std::nullopt;
  return status_;
}

void ChildProcess::supervise() {
  auto fail_start = [this](const std::string& error) {
    std::lock_guard<std::mutex> lock(mu_);
    start_error_ = error;
    started_ = true;
    finished_ = true;
    cv_.notify_all();
  };
  int out[2], err[2], report[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0 || ::pipe2(report, O_CLOEXEC) != 0) {
    fail_start("cannot create pipes for " + spec_.path + ": " + std::strerror(errno));
    return;
  }
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<char*> argv = pointers(spec_.argv);
  std::vector<char*> envp = pointers(spec_.environment);
  std::string chdir_failed =
      "gantry train launch: cannot enter " + spec_.working_dir + " on this node; running in the worker's directory\n";
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0)
    exec_child(parent, out[1], err[1], report[1], spec_.path.c_str(), argv.data(), envp.data(),
               spec_.working_dir.c_str(), chdir_failed);
  int fork_errno = errno;
  ::close(out[1]);
  ::close(err[1]);
  ::close(report[1]);
  if (pid < 0) {
    ::close(out[0]);
    ::close(err[0]);
    ::close(report[0]);
    fail_start("cannot fork to start " + spec_.path + ": " + std::strerror(fork_errno));
    return;
  }
  ::setpgid(pid, pid);  // also in the child: whichever runs first
  int exec_errno = 0;
  ssize_t got;
  do {
    got = ::read(report[0], &exec_errno, sizeof exec_errno);  // EOF once execve succeeded (close-on-exec)
  } while (got < 0 && errno == EINTR);
  ::close(report[0]);
  if (got == static_cast<ssize_t>(sizeof exec_errno)) {
    ::waitpid(pid, nullptr, 0);
    ::close(out[0]);
    ::close(err[0]);
    fail_start("cannot execute " + spec_.path + ": " + std::strerror(exec_errno));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pid_ = pid;
    started_ = true;
    cv_.notify_all();
  }

  LineSplitter splitters[2];
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  bool exited = false;
  auto drain_deadline = std::chrono::steady_clock::time_point::max();
  char buffer[64 * 1024];
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    int ready = ::poll(fds, 2, 100);
    if (ready < 0 && errno != EINTR) break;
    if (ready < 0) continue;
    for (int s = 0; s < 2; ++s) {
      if (fds[s].fd < 0 || (fds[s].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      ssize_t n = ::read(fds[s].fd, buffer, sizeof buffer);
      if (n > 0) {
        splitters[s].feed(buffer, static_cast<size_t>(n),
                          [&](std::string line) { on_line_(s == 0 ? kStdout : kStderr, std::move(line)); });
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[s].fd);
        fds[s].fd = -1;
      }
    }
    if (!exited) {
      // Seen without reaping it: until it is reaped its pid, the group's id, stays ours.
      siginfo_t info{};
      if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) {
        exited = true;
        drain_deadline = std::chrono::steady_clock::now() + kDrainAfterExit;
        std::lock_guard<std::mutex> lock(mu_);
        signal_group_locked(SIGKILL);  // what it left running
      }
    } else if (std::chrono::steady_clock::now() > drain_deadline) {
      break;  // something outside its group holds the pipes open
    }
  }
  for (int s = 0; s < 2; ++s) {
    splitters[s].finish([&](std::string line) { on_line_(s == 0 ? kStdout : kStderr, std::move(line)); });
    if (fds[s].fd >= 0) ::close(fds[s].fd);
  }
  if (!exited) {
    // It closed its output but runs on: wait for it, then end what it left running.
    siginfo_t info{};
    while (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
    }
    std::lock_guard<std::mutex> lock(mu_);
    signal_group_locked(SIGKILL);
  }
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  ExitStatus status;
  if (WIFEXITED(wstatus)) status.code = WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) status.signal = WTERMSIG(wstatus);
  {
    std::lock_guard<std::mutex> lock(mu_);
    reaped_ = true;
    status_ = status;
  }
  on_exit_(status);
  std::lock_guard<std::mutex> lock(mu_);
  finished_ = true;
  cv_.notify_all();
}

}  // namespace gantry::train::launch
