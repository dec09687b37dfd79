#include "agent/worker_pool.h"

#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "common/logging.h"
#include "common/process.h"
#include "gantry/errors.h"
#include "runtime/process_env.h"

namespace gantry::internal {

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* name = sigabbrev_np(sig);
    return "killed by signal " + std::to_string(sig) + (name ? std::string(" (SIG") + name + ")" : "");
  }
  return "status " + std::to_string(status);
}

WorkerPool::WorkerPool(std::map<std::string, std::string> node_environment, ExitCallback on_exit)
    : node_environment_(std::move(node_environment)), on_exit_(std::move(on_exit)) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);  // without one, the monitor looks every 5 ms
  monitor_ = std::thread([this] { monitor_loop(); });
}

WorkerPool::~WorkerPool() {
  stop_all(std::chrono::milliseconds(500));
  stopping_ = true;
  wake_monitor();
  if (monitor_.joinable()) monitor_.join();
  for (const auto& [pid, child] : running_)
    if (child.pidfd >= 0) ::close(child.pidfd);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void WorkerPool::wake_monitor() {
  if (wake_fd_ < 0) return;
  uint64_t one = 1;
  ssize_t n = ::write(wake_fd_, &one, sizeof one);  // fails only when the counter is full: awake anyway
  (void)n;
}

UniqueId WorkerPool::start(const WorkerLaunchSpec& spec, const std::vector<int>& gpu_ids) {
  UniqueId id = UniqueId::generate();
  std::map<std::string, std::string> env_map = current_environment();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [k, v] : node_environment_) env_map[k] = v;
  }
  for (const auto& [k, v] : spec.environment) env_map[k] = v;
  // The agent's GPU i is the i-th device the agent itself may see: when the agent runs
  // with CUDA_VISIBLE_DEVICES=2,3, its GPU 0 is physical device 2.
  std::vector<std::string> visible;
  if (auto it = env_map.find("CUDA_VISIBLE_DEVICES"); it != env_map.end() && !it->second.empty()) {
    size_t start = 0;
    while (start <= it->second.size()) {
      size_t end = it->second.find(',', start);
      if (end == std::string::npos) end = it->second.size();
      visible.push_back(it->second.substr(start, end - start));
      start = end + 1;
    }
  }
  std::string devices;
  for (size_t i = 0; i < gpu_ids.size(); ++i) {
    size_t g = static_cast<size_t>(gpu_ids[i]);
    devices += (i ? "," : "") + (g < visible.size() ? visible[g] : std::to_string(g));
  }
  env_map["GANTRY_WORKER"] = "1";
  env_map["GANTRY_WORKER_ID"] = id.hex();
  env_map["GANTRY_GPU_IDS"] = join_ids(gpu_ids);
  // Set before the process starts, so CUDA in the worker only ever sees its devices;
  // a worker without GPUs sees none.
  env_map["CUDA_VISIBLE_DEVICES"] = devices;

  pid_t pid = 0;
  // Spawned under the lock, so the monitor cannot reap the pid before it is recorded.
  std::lock_guard<std::mutex> lock(mu_);
  int rc = spawn_process(spec.executable, spec.argv, env_map, SpawnOptions{}, &pid);
  if (rc != 0)
    throw Error("cannot start worker process " + spec.executable + ": " + std::strerror(rc));
  // The pidfd is readable once the worker exits (even before this call, as the pid stays
  // ours until reaped); close-on-exec like every pidfd. (Debian 12's <sys/pidfd.h>
  // declares pidfd_open without C linkage: the system call.)
  running_.emplace(pid, Child{id, static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))});  // -1 on failure
  wake_monitor();
  GANTRY_LOG_DEBUG("started worker {} pid {} gpus [{}]", id.short_hex(), pid, join_ids(gpu_ids));
  return id;
}

void WorkerPool::set_node_setting(const std::string& name, const std::string& value) {
  std::lock_guard<std::mutex> lock(mu_);
  node_environment_[name] = value;
}

void WorkerPool::signal(const UniqueId& worker_id, int sig) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [pid, child] : running_)
    if (child.id == worker_id) ::kill(pid, sig);
}

void WorkerPool::stop_all(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [pid, child] : running_) ::kill(pid, SIGTERM);
  }
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (num_running() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [pid, child] : running_) ::kill(pid, SIGKILL);
}

size_t WorkerPool::num_running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_.size();
}

void WorkerPool::monitor_loop() {
  // Waits on our own children by pid, never waitpid(-1): the driver process may have
  // children of its own whose exit statuses are not ours to reap.
  // It sleeps in poll() on each worker's pidfd and on wake_fd_, and looks at every worker
  // when it wakes; a worker without a pidfd (or no wake_fd_) brings back looking every 5 ms.
  std::vector<pollfd> fds;
  while (true) {
    std::vector<std::pair<pid_t, UniqueId>> snapshot;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ && running_.empty()) return;
      for (const auto& [pid, child] : running_) snapshot.emplace_back(pid, child.id);
    }
    for (const auto& [pid, id] : snapshot) {
      int status = 0;
      pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid || (r < 0 && errno == ECHILD)) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (auto it = running_.find(pid); it != running_.end()) {
            if (it->second.pidfd >= 0) ::close(it->second.pidfd);  // only this thread closes pidfds while it runs
            running_.erase(it);
          }
        }
        std::string reason = r == pid ? describe_exit(status) : "exited (status unknown)";
        GANTRY_LOG_DEBUG("worker {} pid {} {}", id.short_hex(), pid, reason);
        if (on_exit_) on_exit_(id, pid, reason);
      }
    }
    bool every_worker_has_a_pidfd = wake_fd_ >= 0;
    fds.clear();
    if (wake_fd_ >= 0) fds.push_back({wake_fd_, POLLIN, 0});
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ && running_.empty()) return;
      for (const auto& [pid, child] : running_) {
        if (child.pidfd < 0) every_worker_has_a_pidfd = false;
        else fds.push_back({child.pidfd, POLLIN, 0});
      }
    }
    if (!every_worker_has_a_pidfd || stopping_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      continue;
    }
    // A worker that exits from now on leaves its pidfd readable, and a new worker or a stop
    // writes wake_fd_: poll() misses neither. Its timeout is a safety net only.
    if (::poll(fds.data(), fds.size(), 1000) > 0 && (fds[0].revents & POLLIN)) {
      uint64_t count = 0;
      ssize_t n = ::read(wake_fd_, &count, sizeof count);
      (void)n;
    }
  }
}

}  // namespace gantry::internal
