#include "runtime/local_cluster.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <thread>

#include "agent/node_agent.h"
#include "dashboard/dashboard_server.h"
#include "common/logging.h"
#include "gantry/errors.h"
#include "gantry/gpu/devices.h"
#include "head/head_service.h"
#include "object_store/object_store.h"
#include "rpc/auth.h"
#include "rpc/grpc_util.h"
#include "runtime/cluster_client.h"

namespace gantry::internal {
namespace {

constexpr size_t kMaxUnixPath = 100;  // sun_path is 108 bytes; leave room for file names

uint64_t default_store_capacity(const std::string& dir) {
  uint64_t want = physical_memory_bytes() * 3 / 10;
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) == 0) {
    uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
    if (free_bytes > 0 && free_bytes < want) want = free_bytes * 9 / 10;
  }
  return want;
}

}  // namespace

void write_token_file(const std::string& path, const std::string& token) {
  // Created with mode 0600 from the start, so the token is never readable by others.
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && ::fchmod(fd, 0600) == 0 &&
            ::write(fd, token.data(), token.size()) == static_cast<ssize_t>(token.size());
  if (fd >= 0) ::close(fd);
  if (!ok) throw Error("cannot write the cluster token to " + path + ": " + std::strerror(errno));
}

std::string create_session_dir(const std::string& root_in, const std::string& prefix) {
  std::string root = session_root(root_in);
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::localtime_r(&now, &tm);
  char stamp[64];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d_%H-%M-%S", &tm);
  std::string base = root + "/" + prefix + "_" + stamp + "_" + std::to_string(::getpid());
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  // A process that starts several sessions within a second gets "_2", "_3"...: a session
  // never inherits another's sockets or logs.
  std::string dir = base;
  for (int n = 2; !ec && !std::filesystem::create_directory(dir, ec); ++n) dir = base + "_" + std::to_string(n);
  if (!ec) std::filesystem::create_directories(dir + "/logs", ec);
  if (!ec) std::filesystem::create_directories(dir + "/sockets", ec);
  if (ec) throw Error("cannot create the session directory " + dir + ": " + ec.message() +
                      "; set InitOptions::temp_dir or GANTRY_TEMP_DIR to a writable place");
  if ((dir + "/sockets/").size() + 40 > kMaxUnixPath)
    throw Error("the session directory path " + dir + " is too long for Unix socket names; set "
                "InitOptions::temp_dir or GANTRY_TEMP_DIR to a shorter directory");
  // Only this user may reach the session's sockets.
  std::filesystem::permissions(dir + "/sockets", std::filesystem::perms::owner_all, ec);
  if (prefix != "session") return dir;
  std::filesystem::path latest = std::filesystem::path(root) / "session_latest";
  std::filesystem::remove(latest, ec);
  std::filesystem::create_directory_symlink(dir, latest, ec);  // best effort, for humans
  return dir;
}

NodeShape make_node_shape(int num_cpus, int num_gpus, const std::map<std::string, double>& custom) {
  NodeShape shape;
  if (num_cpus < 0) num_cpus = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (num_gpus < 0) {
    shape.gpus_detected = true;
    std::string note;
    num_gpus = static_cast<int>(gpu::detect_devices(&note).size());
    if (num_gpus == 0) GANTRY_LOG_INFO("no GPUs found: {}", note);
  }
  std::map<std::string, double> totals = custom;
  for (const char* reserved : {"CPU", "GPU", "memory"})
    if (totals.count(reserved))
      throw Error(std::string("custom resources must not set '") + reserved + "'; use num_cpus / num_gpus instead");
  totals["CPU"] = num_cpus;
  totals["GPU"] = num_gpus;
  totals["memory"] = static_cast<double>(physical_memory_bytes() * 7 / 10);
  try {
    shape.total = ResourceSet::from_doubles(totals);
  } catch (const std::invalid_argument& e) {
    throw Error(std::string("invalid node resources: ") + e.what());
  }
  shape.num_cpus = num_cpus;
  shape.num_gpus = num_gpus;
  return shape;
}

NodeAgentConfig make_agent_config(const std::string& session_dir, const NodeShape& shape,
                                  int64_t object_store_memory, const std::string& listen_address,
                                  const std::string& head_address) {
  NodeAgentConfig ac;
  ac.node_id = UniqueId::generate();
  ac.listen_address = listen_address;
  ac.head_address = head_address;
  ac.total = shape.total;
  ac.num_gpus = shape.num_gpus;
  ac.physical_gpus = shape.gpus_detected;
  ac.logs_dir = session_dir + "/logs";
  std::string shm_root = std::filesystem::exists("/dev/shm") ? "/dev/shm" : session_dir;
  if (size_t n = remove_stale_store_dirs(shm_root))
    GANTRY_LOG_INFO("removed {} object store director{} left by agents that died", n, n == 1 ? "y" : "ies");
  ac.store_dir = shm_root + "/gantry_" + std::to_string(::getpid()) + "_" + ac.node_id.short_hex();
  ac.executable_dir = session_dir + "/executables";
  ac.store_capacity = object_store_memory >= 0 ? static_cast<uint64_t>(object_store_memory)
                                               : default_store_capacity(shm_root);
  ac.worker_environment = {
      {"GANTRY_AGENT_ADDRESS", listen_address},
      {"GANTRY_HEAD_ADDRESS", head_address},
      {"GANTRY_SESSION_DIR", session_dir},
      {"GANTRY_NODE_ID", ac.node_id.hex()},
      {"GANTRY_TOKEN", cluster_token()},
  };
  add_tls_environment(ac.worker_environment);
  return ac;
}

std::unique_ptr<LocalCluster> LocalCluster::start(const InitOptions& options, const std::vector<std::string>& argv) {
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  NodeShape shape = make_node_shape(options.num_cpus, options.num_gpus, options.resources);
  c->session_dir_ = create_session_dir(options.temp_dir);
  c->job_id_ = UniqueId::generate();
  c->num_cpus_ = shape.num_cpus;

  write_token_file(c->session_dir_ + "/token", cluster_token());
  std::string sockets = c->session_dir_ + "/sockets";
  c->head_ = std::make_unique<HeadService>(unix_address(sockets + "/head.sock"), HealthCheckConfig{.enabled = false});
  c->head_->start();
  register_job(c->head_->address(),
               make_job_spec(c->job_id_, argv, unix_address(sockets + "/driver.sock"), options.log_level,
                             options.log_to_driver, /*remote_output=*/false));

  NodeAgentConfig ac = make_agent_config(c->session_dir_, shape, options.object_store_memory,
                                         unix_address(sockets + "/agent.sock"), c->head_->address());
  c->node_id_ = ac.node_id;
  ac.prestart_job = c->job_id_;
  ac.prestart_workers = shape.num_cpus;
  c->agent_ = std::make_unique<NodeAgent>(ac);
  c->agent_->start();
  if (options.dashboard) {
    TlsFiles tls = tls_from_env();
    HttpConfig http{"127.0.0.1", options.dashboard_port, cluster_token(), tls.enabled() ? tls.cert : "",
                    tls.enabled() ? tls.key : ""};
    c->dashboard_ = std::make_unique<DashboardServer>(http, c->head_->address());
    c->dashboard_->start();  // asked for explicitly: a port in use fails init
    std::ofstream(c->session_dir_ + "/dashboard_url") << c->dashboard_->url() << "\n";
  }
  GANTRY_LOG_INFO("local cluster up: {} CPUs, {} GPUs, session {}", shape.num_cpus, shape.num_gpus,
                  c->session_dir_);
  return c;
}

LocalCluster::~LocalCluster() { stop(); }

void LocalCluster::stop() {
  if (dashboard_) dashboard_->stop();
  dashboard_.reset();
  if (agent_) agent_->stop();
  if (head_) head_->stop();
  agent_.reset();
  head_.reset();
}

std::string LocalCluster::dashboard_url() const { return dashboard_ ? dashboard_->url() : std::string(); }

std::string LocalCluster::head_address() const { return head_ ? head_->address() : std::string(); }
std::string LocalCluster::agent_address() const { return agent_ ? agent_->address() : std::string(); }

}  // namespace gantry::internal
