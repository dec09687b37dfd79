#include "head/job_supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "agent/worker_pool.h"
#include "common/logging.h"
#include "common/process.h"
#include "gantry/ids.h"
#include "rpc/auth.h"
#include "rpc/grpc_util.h"

namespace gantry::internal {
namespace {

constexpr size_t kMaxLogChunk = 1 << 20;
constexpr auto kStopGrace = std::chrono::seconds(3);

}  // namespace

JobSupervisor::JobSupervisor(std::string head_address, std::string logs_dir)
    : head_address_(std::move(head_address)), logs_dir_(std::move(logs_dir)) {
  monitor_ = std::thread([this] { monitor_loop(); });
}

JobSupervisor::~JobSupervisor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, e] : submissions_)
      if (e.info.status() == proto::Submission::RUNNING) {
        ::kill(-e.info.pid(), SIGTERM);
        e.stop_requested = true;
        e.stop_deadline = std::chrono::steady_clock::now() + kStopGrace;
      }
  }
  // The monitor reaps them, killing stragglers at their deadline.
  auto deadline = std::chrono::steady_clock::now() + kStopGrace + std::chrono::seconds(1);
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      bool running = false;
      for (const auto& [id, e] : submissions_) running |= e.info.status() == proto::Submission::RUNNING;
      if (!running) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stopping_ = true;
  if (monitor_.joinable()) monitor_.join();
}

grpc::Status JobSupervisor::SubmitJob(grpc::ServerContext* ctx, const proto::SubmitJobRequest* req,
                                      proto::Submission* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  if (req->entrypoint().empty() || req->entrypoint(0).empty())
    return {grpc::StatusCode::INVALID_ARGUMENT, "a job needs a program to run"};
  std::string cwd = req->working_dir().empty() ? "/" : req->working_dir();
  struct stat st {};
  if (::stat(cwd.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return {grpc::StatusCode::INVALID_ARGUMENT,
            "working directory " + cwd + " does not exist on the head's machine; jobs run there"};
  for (const auto& [k, v] : req->environment())
    if (k.empty() || k.find('=') != std::string::npos)
      return {grpc::StatusCode::INVALID_ARGUMENT, "bad environment variable name '" + k + "'"};

  std::string id = "job-" + UniqueId::generate().short_hex();
  std::string log_path = logs_dir_ + "/" + id + ".log";

  std::map<std::string, std::string> env_map = current_environment();
  for (const auto& [k, v] : req->environment()) env_map[k] = v;
  env_map["GANTRY_ADDRESS"] = head_address_;
  env_map["GANTRY_TOKEN"] = cluster_token();
  add_tls_environment(env_map);
  env_map["GANTRY_SUBMISSION_ID"] = id;
  std::vector<std::string> args(req->entrypoint().begin(), req->entrypoint().end());
  SpawnOptions options;
  options.search_path = true;
  options.working_dir = cwd;
  options.output_file = log_path;
  options.new_process_group = true;  // stop reaches its children too
  pid_t pid = 0;
  int rc = spawn_process(args[0], args, env_map, options, &pid);
  if (rc != 0)
    return {grpc::StatusCode::INVALID_ARGUMENT,
            "cannot run " + args[0] + " on the head's machine (in " + cwd + "): " + std::strerror(rc)};

  Entry e;
  e.info.set_id(id);
  *e.info.mutable_entrypoint() = req->entrypoint();
  e.info.set_status(proto::Submission::RUNNING);
  e.info.set_start_time_ms(unix_time_ms());
  e.info.set_pid(pid);
  e.info.set_working_dir(cwd);
  e.log_path = log_path;
  *reply = e.info;
  std::lock_guard<std::mutex> lock(mu_);
  submissions_.emplace(id, std::move(e));
  GANTRY_LOG_INFO("{} started: {} (pid {})", id, args[0], pid);
  return grpc::Status::OK;
}

grpc::Status JobSupervisor::StopJob(grpc::ServerContext* ctx, const proto::SubmissionRequest* req,
                                    proto::Submission* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = submissions_.find(req->id());
  if (it == submissions_.end()) return {grpc::StatusCode::NOT_FOUND, "no job " + req->id()};
  Entry& e = it->second;
  if (e.info.status() == proto::Submission::RUNNING && !e.stop_requested) {
    ::kill(-e.info.pid(), SIGTERM);
    e.stop_requested = true;
    e.stop_deadline = std::chrono::steady_clock::now() + kStopGrace;
  }
  *reply = e.info;
  return grpc::Status::OK;
}

grpc::Status JobSupervisor::GetJobLogs(grpc::ServerContext* ctx, const proto::JobLogsRequest* req,
                                       proto::JobLogs* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::string path;
  bool ended;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = submissions_.find(req->id());
    if (it == submissions_.end()) return {grpc::StatusCode::NOT_FOUND, "no job " + req->id()};
    path = it->second.log_path;
    ended = it->second.info.status() != proto::Submission::RUNNING;
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {grpc::StatusCode::NOT_FOUND, "the job's log " + path + " is gone"};
  struct stat st {};
  ::fstat(fd, &st);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  uint64_t offset = std::min<uint64_t>(req->offset(), size);
  size_t n = static_cast<size_t>(std::min<uint64_t>(size - offset, kMaxLogChunk));
  std::string text(n, '\0');
  ssize_t r = n > 0 ? ::pread(fd, text.data(), n, static_cast<off_t>(offset)) : 0;
  ::close(fd);
  text.resize(r > 0 ? static_cast<size_t>(r) : 0);
  reply->set_next_offset(offset + text.size());
  reply->set_ended(ended && offset + text.size() >= size);
  reply->set_text(std::move(text));
  return grpc::Status::OK;
}

grpc::Status JobSupervisor::ListSubmissions(grpc::ServerContext* ctx, const proto::Empty*,
                                            proto::ListSubmissionsReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, e] : submissions_) *reply->add_submissions() = e.info;
  return grpc::Status::OK;
}

void JobSupervisor::monitor_loop() {
  while (!stopping_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, e] : submissions_) {
      if (e.info.status() != proto::Submission::RUNNING) continue;
      int status = 0;
      pid_t r = ::waitpid(e.info.pid(), &status, WNOHANG);
      if (r == 0) {
        if (e.stop_requested && std::chrono::steady_clock::now() >= e.stop_deadline) ::kill(-e.info.pid(), SIGKILL);
        continue;
      }
      e.info.set_end_time_ms(unix_time_ms());
      if (r < 0) {
        e.info.set_status(proto::Submission::FAILED);
        e.info.set_message("lost track of the process: " + std::string(std::strerror(errno)));
      } else {
        e.info.set_exit_code(WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
        e.info.set_message(describe_exit(status));
        if (e.stop_requested) e.info.set_status(proto::Submission::STOPPED);
        else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) e.info.set_status(proto::Submission::SUCCEEDED);
        else e.info.set_status(proto::Submission::FAILED);
      }
      GANTRY_LOG_INFO("{} ended: {}", id, e.info.message());
    }
  }
}

}  // namespace gantry::internal
