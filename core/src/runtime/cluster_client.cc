#include "runtime/cluster_client.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "common/logging.h"
#include "common/sha256.h"
#include "gantry/errors.h"
#include "gantry/head.grpc.pb.h"
#include "rpc/grpc_util.h"

namespace gantry::internal {
std::string read_small_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string s = text.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

namespace {

// Session directories under `root` that a `gantry start --head` wrote, newest first.
std::vector<std::filesystem::path> head_sessions(const std::string& root) {
  std::vector<std::pair<std::filesystem::file_time_type, std::filesystem::path>> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    if (entry.path().filename().string().rfind("session_", 0) != 0 || entry.is_symlink()) continue;
    std::filesystem::path file = entry.path() / "head_address";
    if (std::filesystem::exists(file, ec)) found.emplace_back(std::filesystem::last_write_time(file, ec), entry.path());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::filesystem::path> out;
  for (auto& [time, path] : found) out.push_back(path);
  return out;
}

std::unique_ptr<proto::Head::Stub> head_stub(const std::string& head_address) {
  return proto::Head::NewStub(make_channel(head_address));
}

}  // namespace

std::string session_root(const std::string& temp_dir) {
  if (!temp_dir.empty()) return temp_dir;
  const char* tmp = std::getenv("TMPDIR");
  return std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/gantry";
}

std::string find_cluster_token(const std::string& env_token, const std::string& head_address,
                               const std::string& root) {
  if (!env_token.empty()) return env_token;
  for (const auto& dir : head_sessions(root))
    if (read_small_file(dir / "head_address") == head_address) {
      std::string token = read_small_file(dir / "token");
      if (!token.empty()) return token;
    }
  throw Error("no cluster token for " + head_address + ": set GANTRY_TOKEN to the token printed by "
              "`gantry start --head` (it is in <session>/token on the head's machine)");
}

TlsFiles find_cluster_tls(const std::string& head_address, const std::string& root) {
  TlsFiles env = tls_from_env();
  if (env.enabled()) return env;
  for (const auto& dir : head_sessions(root))
    if (read_small_file(dir / "head_address") == head_address) {
      std::ifstream in(dir / "tls");
      TlsFiles files;
      std::getline(in, files.cert);
      std::getline(in, files.key);
      std::getline(in, files.ca);
      return files;
    }
  return {};
}

std::string latest_head_address(const std::string& root) {
  for (const auto& dir : head_sessions(root)) {
    // Only a session whose gantry process still runs.
    std::string pid = read_small_file(dir / "gantry.pid");
    if (!pid.empty() && ::kill(std::stoi(pid), 0) == 0) return read_small_file(dir / "head_address");
  }
  return {};
}

std::string dashboard_url_for(const std::string& root, const std::string& head_address) {
  for (const auto& dir : head_sessions(root)) {
    std::string pid = read_small_file(dir / "gantry.pid");
    if (pid.empty() || ::kill(std::stoi(pid), 0) != 0) continue;
    if (read_small_file(dir / "head_address") == head_address) return read_small_file(dir / "dashboard_url");
  }
  return {};
}

LocalNode find_local_node(const std::string& head_address) {
  proto::ListNodesReply nodes;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status s = head_stub(head_address)->ListNodes(&ctx, proto::Empty(), &nodes);
  if (!s.ok())
    throw Error("cannot reach the cluster's head at " + head_address + ": " + s.error_message() +
                (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ? " (check GANTRY_TOKEN)" : ""));
  std::string here = host_name();
  for (const auto& node : nodes.nodes())
    if (node.alive() && node.hostname() == here) return {UniqueId::from_binary(node.node_id()), node.agent_address()};
  throw Error("no node of the cluster at " + head_address + " runs on this machine (" + here +
              "); start one here with `gantry start --address " + head_address + "`");
}

proto::JobSpec make_job_spec(const UniqueId& job_id, const std::vector<std::string>& argv,
                             const std::string& driver_address, const std::string& log_level, bool log_to_driver,
                             bool remote_output) {
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error("cannot find this program's executable (/proc/self/exe): " + ec.message());
  proto::JobSpec job;
  job.set_job_id(job_id.binary());
  job.set_executable(exe.string());
  for (const auto& a : argv) job.add_argv(a);
  if (job.argv().empty()) job.add_argv(exe.string());
  job.set_driver_address(driver_address);
  job.set_driver_pid(::getpid());
  auto& env = *job.mutable_environment();
  env["GANTRY_JOB_ID"] = job_id.hex();
  env["GANTRY_LOG_LEVEL"] = log_level;
  env["GANTRY_LOG_TO_DRIVER"] = log_to_driver ? "1" : "0";
  if (remote_output) env["GANTRY_OUTPUT_TO"] = driver_address;
  return job;
}

void send_executable(const std::string& head_address, proto::JobSpec* job) {
  // /proc/self/exe reads the running program even if its file was replaced or removed.
  // It cannot change while we run, so it is hashed once per process.
  const std::string self = "/proc/self/exe";
  static std::mutex mu;
  static std::string digest;
  static uint64_t size = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    std::string error;
    if (digest.empty()) digest = sha256_file(self, &size, &error);
    if (digest.empty()) throw Error("cannot read this program's executable to send it to the cluster: " + error);
  }
  job->set_exe_digest(digest);
  job->set_exe_size(size);
  auto head = head_stub(head_address);
  proto::ExecutableRef ref;
  ref.set_digest(digest);
  proto::HasExecutableReply has;
  grpc::ClientContext ask;
  ask.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status s = head->HasExecutable(&ask, ref, &has);
  if (!s.ok()) throw Error("cannot reach the cluster's head at " + head_address + ": " + s.error_message());
  if (has.has()) return;
  auto started = std::chrono::steady_clock::now();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  proto::Empty reply;
  auto writer = head->PutExecutable(&ctx, &reply);
  std::ifstream in(self, std::ios::binary);
  std::vector<char> buffer(1 << 20);
  proto::ExecutableChunk chunk;
  chunk.set_digest(digest);
  chunk.set_size(size);
  bool sent = true;
  do {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    chunk.set_data(buffer.data(), static_cast<size_t>(in.gcount()));
    if (!writer->Write(chunk)) {
      sent = false;
      break;
    }
    chunk.Clear();
  } while (in);
  writer->WritesDone();
  s = writer->Finish();
  if (!s.ok() || !sent)
    throw Error("cannot send this program to the cluster's head at " + head_address + ": " + s.error_message());
  GANTRY_LOG_INFO("sent the executable ({:.1f} MiB) to the head in {} ms", static_cast<double>(size) / (1024.0 * 1024.0),
                  std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
}

void register_job(const std::string& head_address, const proto::JobSpec& job) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  proto::Empty reply;
  grpc::Status s = head_stub(head_address)->RegisterJob(&ctx, job, &reply);
  if (!s.ok()) throw Error("the head at " + head_address + " refused the job: " + s.error_message());
}

void finish_job(const std::string& head_address, const UniqueId& job_id) {
  proto::JobRequest req;
  req.set_job_id(job_id.binary());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
  proto::Empty reply;
  head_stub(head_address)->FinishJob(&ctx, req, &reply);
}

}  // namespace gantry::internal
