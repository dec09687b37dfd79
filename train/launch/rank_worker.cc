#include "rank_worker.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "rank_layout.h"

extern char** environ;

namespace gantry::train::launch {
namespace {

// Output held for the launcher before the program is slowed down (its pipe fills).
constexpr size_t kMaxBuffered = 8 * 1024 * 1024;
// Output handed over by one poll at most.
constexpr size_t kMaxPerPoll = 1024 * 1024;

std::map<std::string, std::string> read_environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    size_t eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  return env;
}

}  // namespace

RankWorker* RankWorker::create() { return new RankWorker(read_environment()); }

RankWorker::RankWorker(std::map<std::string, std::string> node_env) : node_env_(std::move(node_env)) {}

RankWorker::~RankWorker() {
  // The program's reader thread uses the members declared after child_: end it first.
  stop(0);
  child_.reset();
}

WorkerPlace RankWorker::place() const {
  RuntimeContext ctx = gantry::runtime_context();
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  auto cuda = node_env_.find("CUDA_VISIBLE_DEVICES");
  return {ctx.node_id, ctx.node_ip, host, cuda == node_env_.end() ? std::string() : cuda->second, ::getpid()};
}

int RankWorker::free_port() const {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int error = errno;
    ::close(fd);
    throw std::runtime_error(std::string("cannot find a free port: ") + std::strerror(error));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

void RankWorker::start(ProgramSpec spec) {
  std::lock_guard<std::mutex> control(control_mu_);
  if (child_) throw std::logic_error("this worker already runs its program");
  ChildProcess::Spec child{spec.path, std::move(spec.argv), program_environment(node_env_, spec.environment),
                           spec.working_dir};
  child_ = std::make_unique<ChildProcess>(
      std::move(child), [this](int stream, std::string text) { add_line(stream, std::move(text)); },
      [this](const ExitStatus& status) {
        std::lock_guard<std::mutex> lock(mu_);
        exit_ = status;
        cv_.notify_all();
      });
}

void RankWorker::add_line(int stream, std::string text) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return buffered_bytes_ < kMaxBuffered || stopping_; });
  buffered_bytes_ += text.size();
  lines_.push_back({stream, std::move(text)});
  cv_.notify_all();
}

RankProgress RankWorker::take_locked() {
  RankProgress progress;
  size_t taken = 0;
  while (!lines_.empty() && (taken < kMaxPerPoll || stopping_)) {
    taken += lines_.front().text.size();
    progress.lines.push_back(std::move(lines_.front()));
    lines_.pop_front();
  }
  buffered_bytes_ -= taken;
  if (lines_.empty() && exit_) {
    progress.exited = true;
    progress.exit_code = exit_->code;
    progress.exit_signal = exit_->signal;
  }
  cv_.notify_all();  // room for the reader thread again
  return progress;
}

RankProgress RankWorker::poll(int wait_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(wait_ms), [this] { return !lines_.empty() || exit_ || stopping_; });
  return take_locked();
}

RankProgress RankWorker::stop(int grace_ms) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  {
    std::lock_guard<std::mutex> control(control_mu_);
    if (child_) child_->terminate(std::chrono::milliseconds(grace_ms));
  }
  std::lock_guard<std::mutex> lock(mu_);
  return take_locked();
}

}  // namespace gantry::train::launch

GANTRY_REMOTE(gantry::train::launch::RankWorker::create, &gantry::train::launch::RankWorker::place,
              &gantry::train::launch::RankWorker::free_port, &gantry::train::launch::RankWorker::start,
              &gantry::train::launch::RankWorker::poll, &gantry::train::launch::RankWorker::stop);
