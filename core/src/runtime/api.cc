// The public entry points: init/shutdown, the worker's main loop, and the non-template
// pieces of the API headers.

#include <grpc/grpc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>

#include "common/logging.h"
#include "gantry/gantry.h"
#include "dashboard/login_link.h"
#include "rpc/auth.h"
#include "rpc/frame_socket.h"
#include "rpc/grpc_util.h"
#include "runtime/cluster_client.h"
#include "runtime/core_worker.h"
#include "runtime/local_cluster.h"
#include "runtime/output_forwarder.h"
#include "runtime/process_env.h"
#include "runtime/task_executor.h"

namespace gantry {
namespace {

using internal::CoreWorker;
using internal::LocalCluster;

std::mutex g_init_mu;  // serialises init and shutdown
std::atomic<detail::Runtime*> g_runtime{nullptr};
std::unique_ptr<LocalCluster> g_cluster;
std::unique_ptr<CoreWorker> g_core;
// A driver that joined a running cluster: its head and job, finished at shutdown.
std::string g_joined_head;
UniqueId g_joined_job;

// "--gantry-address X" or "--gantry-address=X" among the program's arguments, else empty.
std::string address_flag(const std::vector<std::string>& args) {
  const std::string flag = "--gantry-address";
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == flag && i + 1 < args.size()) return args[i + 1];
    if (args[i].rfind(flag + "=", 0) == 0) return args[i].substr(flag.size() + 1);
  }
  return {};
}

std::vector<std::string> args_from(int argc, char** argv) {
  std::vector<std::string> out;
  for (int i = 0; i < argc; ++i) out.emplace_back(argv[i]);
  return out;
}

std::vector<std::string> args_from_proc() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::vector<std::string> out;
  std::string arg;
  while (std::getline(in, arg, '\0')) out.push_back(arg);
  return out;
}

std::string level_or(const std::string& level, const std::string& fallback) {
  return level.empty() ? fallback : level;
}

/// A worker process: serve tasks until the agent stops us or the driver goes away.
[[noreturn]] void run_worker(const internal::ProcessEnv& env) {
  // SIGTERM/SIGINT are taken synchronously below; block them before any thread starts so
  // every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  pid_t parent = ::getppid();
  // Let the node agent (our parent) and the debuggers it starts read our stacks for the
  // dashboard even where Yama restricts ptrace to ancestors.
  ::prctl(PR_SET_PTRACER, static_cast<unsigned long>(parent), 0, 0, 0);

  std::string logs = env.session_dir + "/logs";
  std::string tag = "worker-" + std::to_string(::getpid());
  internal::setup_logging(level_or(env.log_level, "warn"), logs + "/" + tag + ".log", tag);
  internal::set_cluster_token(env.token);
  internal::set_tls(internal::tls_from_env());
  internal::OutputForwarder::Sink sink;
  if (!env.output_to.empty()) {
    // A driver that joined a cluster is not our parent's terminal: send it the lines.
    std::shared_ptr<proto::WorkerService::Stub> driver =
        proto::WorkerService::NewStub(internal::make_channel(env.output_to));
    sink = [driver](int stream, const std::string& text) {
      proto::OutputText req;
      req.set_stream(stream);
      req.set_text(text);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      proto::Empty reply;
      driver->PrintOutput(&ctx, req, &reply);  // a driver gone away loses only its terminal copy
    };
  }
  auto output =
      std::make_unique<internal::OutputForwarder>(logs + "/" + tag + ".out", env.log_to_driver, std::move(sink));

  internal::CoreWorkerConfig config;
  config.is_driver = false;
  config.worker_id = UniqueId::from_hex(env.worker_id);
  config.node_id = UniqueId::from_hex(env.node_id);
  config.job_id = UniqueId::from_hex(env.job_id);
  // In a multi-node cluster callers on other machines reach us over TCP; else a Unix socket.
  std::unique_ptr<internal::PortReservation> port;
  if (!env.node_ip.empty()) {
    port = std::make_unique<internal::PortReservation>(env.node_ip);
    config.listen_address = port->address();
  } else {
    config.listen_address = internal::unix_address(env.session_dir + "/sockets/w-" + env.worker_id + ".sock");
  }
  config.agent_address = env.agent_address;
  config.head_address = env.head_address;
  config.node_ip = env.node_ip.empty() ? "127.0.0.1" : env.node_ip;
  config.gpu_ids = env.gpu_ids;
  config.session_dir = env.session_dir;
  config.force_grpc_streams = env.force_grpc_streams;
  config.get_spin = std::chrono::microseconds(env.get_spin_us);
  config.output = output.get();
  try {
    g_core = std::make_unique<CoreWorker>(config);
    g_runtime = g_core.get();
    g_core->start();
    port.reset();
  } catch (const std::exception& e) {
    GANTRY_LOG_ERROR("worker start-up failed: {}", e.what());
    output->flush();
    std::_Exit(3);
  }
  timespec tick{0, 200 * 1000 * 1000};
  while (true) {
    int sig = ::sigtimedwait(&stop_signals, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) break;
    if (::getppid() != parent) break;  // the agent (or embedded driver) is gone
  }
  // Make sure everything the user's code printed reaches the terminal, then leave without
  // running destructors: threads of the user's code may still be inside tasks.
  output->flush();
  std::fflush(nullptr);
  std::_Exit(0);
}

// Starts the driver's CoreWorker into g_core (left empty when that fails). Needs g_init_mu held.
void start_driver(const UniqueId& node_id, const UniqueId& job_id, const std::string& listen_address,
                  const std::string& agent_address, const std::string& head_address, const std::string& session_dir,
                  const internal::ProcessEnv& env, const std::string& node_ip) {
  internal::CoreWorkerConfig config;
  config.is_driver = true;
  config.node_ip = node_ip;
  config.worker_id = UniqueId::generate();
  config.node_id = node_id;
  config.job_id = job_id;
  config.listen_address = listen_address;
  config.agent_address = agent_address;
  config.head_address = head_address;
  config.session_dir = session_dir;
  config.force_grpc_streams = env.force_grpc_streams;
  config.get_spin = std::chrono::microseconds(env.get_spin_us);
  try {
    g_core = std::make_unique<CoreWorker>(config);
    g_core->start();
  } catch (...) {
    g_core.reset();
    throw;
  }
}

// A driver joining the running cluster at `address` ("host:port", or "auto" for the
// newest head started on this machine). Needs g_init_mu held.
void join_cluster(std::string address, const InitOptions& options, const std::vector<std::string>& args,
                  const internal::ProcessEnv& env) {
  std::string root = internal::session_root(options.temp_dir);
  if (address == "auto") {
    address = internal::latest_head_address(root);
    if (address.empty()) throw Error("address \"auto\": no running `gantry start --head` found under " + root);
  }
  internal::set_cluster_token(internal::find_cluster_token(env.token, address, root));
  internal::set_tls(internal::find_cluster_tls(address, root));
  internal::LocalNode node = internal::find_local_node(address);
  std::string session = internal::create_session_dir(options.temp_dir, "driver");
  internal::setup_logging(options.log_level, session + "/logs/driver.log", "driver");
  UniqueId job_id = UniqueId::generate();
  // Workers on other machines fetch our objects and send us their output: serve on the
  // local node's IP when the cluster speaks TCP.
  std::string listen = internal::unix_address(session + "/sockets/driver.sock");
  std::unique_ptr<internal::PortReservation> port;
  std::string node_host;
  int node_port = 0;
  if (internal::split_host_port(node.agent_address, &node_host, &node_port)) {
    port = std::make_unique<internal::PortReservation>(node_host);
    listen = port->address();
  }
  proto::JobSpec job = internal::make_job_spec(job_id, args, listen, options.log_level, options.log_to_driver,
                                              /*remote_output=*/true);
  internal::send_executable(address, &job);
  internal::register_job(address, job);
  try {
    start_driver(node.node_id, job_id, listen, node.agent_address, address, session, env,
                 node_host.empty() ? "127.0.0.1" : node_host);
    port.reset();
  } catch (...) {
    internal::finish_job(address, job_id);
    throw;
  }
  g_joined_head = address;
  g_joined_job = job_id;
  g_runtime = g_core.get();
  GANTRY_LOG_INFO("joined the cluster at {} as job {} (node {})", address, job_id.hex(), node.node_id.short_hex());
}

}  // namespace

void init(int argc, char** argv, InitOptions options) {
  // gRPC stays set up for the rest of the process: a channel released on a gRPC thread
  // after shutdown() must not tear it down under that thread (see keep_grpc_for_process).
  internal::keep_grpc_for_process();
  std::vector<std::string> args = argc > 0 && argv != nullptr ? args_from(argc, argv) : args_from_proc();
  internal::ProcessEnv env;
  try {
    env = internal::ProcessEnv::read();
  } catch (const std::invalid_argument& e) {
    throw Error(std::string("bad GANTRY_* environment variable: ") + e.what());
  }
  if (env.worker_mode) run_worker(env);

  std::lock_guard<std::mutex> lock(g_init_mu);
  if (g_core) throw Error("gantry::init was already called; call gantry::shutdown first");
  std::string address = options.address;
  if (address.empty()) address = address_flag(args);
  if (address.empty()) address = env.address;
  if (options.temp_dir.empty()) options.temp_dir = env.temp_dir;
  if (!env.log_level.empty()) options.log_level = env.log_level;
  if (spdlog::level::from_str(options.log_level) == spdlog::level::off && options.log_level != "off")
    throw Error("unknown log_level '" + options.log_level + "'; use trace, debug, info, warn, error or off");
  if (!address.empty()) {
    join_cluster(address, options, args, env);
    return;
  }

  // The embedded cluster's token: GANTRY_TOKEN when set, else a fresh one per session.
  internal::set_cluster_token(!env.token.empty() ? env.token : internal::generate_token());
  internal::set_tls({});  // the embedded cluster talks over Unix sockets only
  g_cluster = LocalCluster::start(options, args);
  internal::setup_logging(options.log_level, g_cluster->session_dir() + "/logs/driver.log", "driver");
  try {
    start_driver(g_cluster->node_id(), g_cluster->job_id(),
                 internal::unix_address(g_cluster->session_dir() + "/sockets/driver.sock"),
                 g_cluster->agent_address(), g_cluster->head_address(), g_cluster->session_dir(), env,
                 "127.0.0.1");
  } catch (...) {
    g_cluster.reset();
    throw;
  }
  g_runtime = g_core.get();
}

void init(InitOptions options) { init(0, nullptr, std::move(options)); }

void shutdown() {
  std::lock_guard<std::mutex> lock(g_init_mu);
  if (!g_core) return;
  g_runtime = nullptr;
  // A joined driver ends its job first: the nodes stop its workers, which send their last
  // output to us while we still serve.
  if (!g_joined_head.empty()) internal::finish_job(g_joined_head, g_joined_job);
  g_joined_head.clear();
  g_core->stop();
  if (g_cluster) g_cluster->stop();
  g_core.reset();
  g_cluster.reset();
}

bool is_initialized() { return g_runtime.load() != nullptr; }

bool is_cancelled() { return internal::current_task_cancelled(); }

std::string dashboard_url() { return g_cluster ? g_cluster->dashboard_url() : std::string(); }

std::string dashboard_login_url(std::chrono::seconds valid) {
  std::string url = dashboard_url();
  if (url.empty()) return url;
  int64_t expires =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch() + valid)
          .count();
  return url + "/login?link=" + internal::make_login_link(internal::cluster_token(), expires);
}

std::vector<int> get_gpu_ids() { return detail::runtime().context().gpu_ids; }

RuntimeContext runtime_context() { return detail::runtime().context(); }

std::vector<NodeInfo> nodes() { return detail::runtime().nodes(); }

WaitIndices wait(const std::vector<AnyObjectRef>& refs, size_t num_returns,
                 std::optional<std::chrono::milliseconds> timeout) {
  std::vector<std::pair<ObjectId, std::string>> ids;
  ids.reserve(refs.size());
  for (const auto& r : refs) ids.emplace_back(r.id(), r.owner());
  std::vector<bool> ready = detail::runtime().wait(ids, num_returns, timeout);
  WaitIndices out;
  for (size_t i = 0; i < refs.size(); ++i) (ready[i] ? out.ready : out.pending).push_back(i);
  return out;
}

std::map<std::string, double> cluster_resources() { return detail::runtime().cluster_resources(false); }

std::map<std::string, double> available_resources() { return detail::runtime().cluster_resources(true); }

SchedulingStrategy SchedulingStrategy::placement_group(const PlacementGroup& group, int bundle_index) {
  SchedulingStrategy s;
  s.kind = Kind::kPlacementGroup;
  s.placement_group_id = group.id();
  s.bundle_index = bundle_index;
  return s;
}

bool PlacementGroup::wait(std::chrono::milliseconds timeout) const {
  return detail::runtime().wait_placement_group(id_, timeout);
}

std::vector<std::string> PlacementGroup::bundle_nodes() const {
  return detail::runtime().placement_group_bundle_nodes(id_);
}

PlacementGroup create_placement_group(PlacementGroupOptions options) {
  std::string id = detail::runtime().create_placement_group(options);
  return PlacementGroup(std::move(id), std::move(options));
}

void remove_placement_group(const PlacementGroup& group) { detail::runtime().remove_placement_group(group.id()); }

std::optional<PlacementGroup> get_placement_group(const std::string& name) {
  auto found = detail::runtime().find_placement_group(name);
  if (!found) return std::nullopt;
  return PlacementGroup(std::move(found->first), std::move(found->second));
}

namespace detail {

Runtime& runtime() {
  Runtime* rt = g_runtime.load();
  if (rt == nullptr) throw Error("gantry is not running: call gantry::init(argc, argv) first");
  return *rt;
}

Runtime* runtime_if_alive() { return g_runtime.load(); }

namespace {
thread_local std::vector<std::shared_ptr<RefState>>* t_nested_refs = nullptr;
}  // namespace

NestedRefCollector::NestedRefCollector(std::vector<std::shared_ptr<RefState>>* out) : previous_(t_nested_refs) {
  t_nested_refs = out;
}

NestedRefCollector::~NestedRefCollector() { t_nested_refs = previous_; }

void NestedRefCollector::note(const std::shared_ptr<RefState>& ref) {
  if (t_nested_refs != nullptr) t_nested_refs->push_back(ref);
}

RefState::RefState(ObjectId id, std::string owner) : id_(id), owner_(std::move(owner)) {
  runtime().add_local_ref(id_, owner_);
}

RefState::~RefState() {
  if (Runtime* rt = runtime_if_alive()) rt->remove_local_ref(id_);
}

void encode_ref(Writer& w, const ObjectId& id, const std::string& owner) {
  std::string payload = id.binary() + owner;
  w.ext(kExtObjectRef, payload.data(), payload.size());
}

std::shared_ptr<RefState> decode_ref(Reader& r) {
  int8_t type = 0;
  std::string_view payload = r.ext(type);
  if (type != kExtObjectRef || payload.size() < UniqueId::kSize) r.fail("ObjectRef");
  return std::make_shared<RefState>(UniqueId::from_binary(payload.substr(0, UniqueId::kSize)),
                                    std::string(payload.substr(UniqueId::kSize)));
}

void encode_actor(Writer& w, const ActorId& id) {
  std::string payload = id.binary();
  w.ext(kExtActorHandle, payload.data(), payload.size());
}

ActorId decode_actor(Reader& r) {
  int8_t type = 0;
  std::string_view payload = r.ext(type);
  if (type != kExtActorHandle || payload.size() != UniqueId::kSize) r.fail("ActorHandle");
  return UniqueId::from_binary(payload);
}

std::string require_function_name(const void* address, const char* what) {
  std::string name = Registry::instance().name_of(address);
  if (name.empty())
    throw Error(std::string("this ") + what + " is not registered with gantry: add GANTRY_REMOTE(" +
                "its name) at namespace scope in a source file of the program");
  return name;
}

std::string require_method_name(const std::string& name, const char* what) {
  if (name.empty())
    throw Error(std::string("this ") + what + " is not registered with gantry: list it in " +
                "GANTRY_REMOTE(Class::create, &Class::method, ...)");
  return name;
}

}  // namespace detail
}  // namespace gantry
