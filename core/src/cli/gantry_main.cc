// The `gantry` command: start and stop this machine's part of a cluster, and show its state.
//
// Exit codes: 0 success; 1 the operation failed (cluster unreachable, start-up error);
// 2 bad command line (CLI11's own code for parse errors is 106 and is mapped to 2).

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "agent/node_agent.h"
#include "dashboard/cluster_source.h"
#include "dashboard/dashboard_server.h"
#include "dashboard/login_link.h"
#include "dashboard/node_metrics.h"
#include "common/logging.h"
#include "gantry/errors.h"
#include "head/head_service.h"
#include "head/job_supervisor.h"
#include "rpc/auth.h"
#include "rpc/grpc_util.h"
#include "cli/list_owned.h"
#include "runtime/cluster_client.h"
#include "runtime/local_cluster.h"

namespace gantry::internal {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct StartOptions {
  bool head = false;
  std::string address;  // the head to join (without --head)
  int port = 6380;
  int num_cpus = -1;
  int num_gpus = -1;
  std::string resources = "{}";
  bool block = false;
  std::string temp_dir;
  std::string node_ip;
  int64_t object_store_memory = -1;
  std::string log_level = "info";
  std::vector<std::string> allowed_executables;
  double node_timeout_s = 5;
  std::string tls_cert, tls_key, tls_ca;
  int dashboard_port = 8265;  // -1: no dashboard
  std::string dashboard_host = "127.0.0.1";
  bool no_dashboard = false;
  int metrics_port = -1;  // -1: no agent metrics endpoint
  std::string metrics_host = "127.0.0.1";
};

// Parses a flat JSON object of numbers: {"A": 2, "B": 0.5}. Throws naming what is wrong.
std::map<std::string, double> parse_resources(const std::string& text) {
  std::map<std::string, double> out;
  size_t i = 0;
  auto skip = [&] {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  };
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("--resources must be a JSON object of numbers like '{\"A\": 2}': " + what +
                                " at offset " + std::to_string(i));
  };
  skip();
  if (i >= text.size() || text[i] != '{') fail("expected '{'");
  ++i;
  skip();
  if (i < text.size() && text[i] == '}') return out;
  while (true) {
    skip();
    if (i >= text.size() || text[i] != '"') fail("expected a quoted name");
    size_t end = text.find('"', i + 1);
    if (end == std::string::npos) fail("unterminated name");
    std::string name = text.substr(i + 1, end - i - 1);
    if (name.empty()) fail("empty name");
    i = end + 1;
    skip();
    if (i >= text.size() || text[i] != ':') fail("expected ':'");
    ++i;
    skip();
    size_t used = 0;
    double value = 0;
    try {
      value = std::stod(text.substr(i), &used);
    } catch (const std::exception&) {
      fail("expected a number for \"" + name + "\"");
    }
    if (!(value >= 0)) fail("\"" + name + "\" must not be negative");
    out[name] = value;
    i += used;
    skip();
    if (i < text.size() && text[i] == ',') {
      ++i;
      continue;
    }
    if (i < text.size() && text[i] == '}') {
      ++i;
      skip();
      if (i != text.size()) fail("text after the closing '}'");
      return out;
    }
    fail("expected ',' or '}'");
  }
}

// The address other machines reach this one by: the first non-loopback address of the
// host name, else 127.0.0.1.
std::string default_node_ip() {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  addrinfo* res = nullptr;
  std::string ip = "127.0.0.1";
  if (::getaddrinfo(host_name().c_str(), nullptr, &hints, &res) == 0) {
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      char buf[INET_ADDRSTRLEN] = {};
      auto* sin = reinterpret_cast<sockaddr_in*>(a->ai_addr);
      if (::inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf) && std::string(buf).rfind("127.", 0) != 0) {
        ip = buf;
        break;
      }
    }
    ::freeaddrinfo(res);
  }
  return ip;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text << "\n";
  if (!out) throw Error("cannot write " + path);
}

volatile sig_atomic_t g_stop = 0;
void on_stop_signal(int) { g_stop = 1; }

// Runs head (with --head) and node agent until SIGTERM or SIGINT. `ready` is called once
// they serve, with the lines to print; it may fork-detach the caller.
int run_node(const StartOptions& o, const std::function<void(const std::string&)>& ready) {
  keep_grpc_for_process();
  NodeShape shape = make_node_shape(o.num_cpus, o.num_gpus, parse_resources(o.resources));
  std::string session = create_session_dir(o.temp_dir);
  setup_logging(o.log_level, session + "/logs/gantry.log", o.head ? "head" : "agent");
  std::string ip = o.node_ip.empty() ? default_node_ip() : o.node_ip;
  std::string root = session_root(o.temp_dir);
  auto absolute = [](const std::string& path) {
    return path.empty() ? path : std::filesystem::absolute(path).string();
  };
  TlsFiles tls{absolute(o.tls_cert), absolute(o.tls_key), absolute(o.tls_ca)};
  // Without flags: GANTRY_TLS_*, or (joining) what this machine's session of that head uses.
  if (!tls.enabled() && tls.key.empty()) tls = o.head ? tls_from_env() : find_cluster_tls(o.address, root);
  set_tls(tls);
  if (tls.enabled()) write_file(session + "/tls", tls.cert + "\n" + tls.key + "\n" + tls.ca + "\n");

  std::unique_ptr<JobSupervisor> supervisor;  // outlives the head's server (declared first)
  std::unique_ptr<HeadService> head;
  std::string head_address = o.address;
  if (o.head) {
    set_cluster_token(!std::getenv("GANTRY_TOKEN") || !*std::getenv("GANTRY_TOKEN") ? generate_token()
                                                                                     : std::getenv("GANTRY_TOKEN"));
    head_address = ip + ":" + std::to_string(o.port);
    HealthCheckConfig health;
    health.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.node_timeout_s * 1000));
    health.period = std::min(health.period, std::max(health.timeout / 4, std::chrono::milliseconds(50)));
    head = std::make_unique<HeadService>("0.0.0.0:" + std::to_string(o.port), health);
    head->set_executable_dir(session + "/executables");
    supervisor = std::make_unique<JobSupervisor>(head_address, session + "/logs");
    head->add_service(supervisor.get());
    head->start();
  } else {
    const char* env_token = std::getenv("GANTRY_TOKEN");
    set_cluster_token(find_cluster_token(env_token ? env_token : "", head_address, root));
  }
  write_token_file(session + "/token", cluster_token());

  // The dashboard asks the head and agents over gRPC like any client; it is declared
  // after the head so that it stops first.
  std::unique_ptr<DashboardServer> dashboard;
  std::string dashboard_note;
  if (o.head && !o.no_dashboard) {
    HttpConfig http{o.dashboard_host, o.dashboard_port, cluster_token(), tls.enabled() ? tls.cert : "",
                    tls.enabled() ? tls.key : ""};
    dashboard = std::make_unique<DashboardServer>(http, head_address);
    try {
      dashboard->start();
      write_file(session + "/dashboard_url", dashboard->url());
      dashboard_note = "  dashboard: " + dashboard->url() + "  (sign in with a one-time link: gantry dashboard)\n";
    } catch (const std::exception& e) {
      GANTRY_LOG_WARN("no dashboard: {}", e.what());
      dashboard_note = std::string("  dashboard: not started: ") + e.what() + " (--dashboard-port)\n";
      dashboard.reset();
    }
  }

  NodeAgentConfig ac = make_agent_config(session, shape, o.object_store_memory, ip + ":0", head_address);
  ac.allowed_executable_dirs = o.allowed_executables;
  NodeAgent agent(ac);
  agent.start();
  std::unique_ptr<MetricsServer> metrics;
  if (o.metrics_port >= 0) {
    auto stub = std::shared_ptr<proto::NodeAgent::Stub>(proto::NodeAgent::NewStub(make_channel(agent.address())));
    HttpConfig http{o.metrics_host, o.metrics_port, cluster_token(), tls.enabled() ? tls.cert : "",
                    tls.enabled() ? tls.key : ""};
    metrics = std::make_unique<MetricsServer>(http, [stub] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      proto::NodeStats stats;
      grpc::Status s = stub->GetNodeStats(&ctx, proto::Empty(), &stats);
      if (!s.ok()) throw Error("the node agent did not answer: " + s.error_message());
      PrometheusText text;
      add_node_metrics(text, stats);
      return text.str();
    });
    metrics->start();  // a port in use is an error the user asked about: fail the start
    write_file(session + "/metrics_url", metrics->url() + "/metrics");
  }
  write_file(session + "/gantry.pid", std::to_string(::getpid()));
  if (o.head) write_file(session + "/head_address", head_address);
  GANTRY_LOG_INFO("node {} up: agent {}, {} CPUs, {} GPUs", ac.node_id.short_hex(), agent.address(),
                  shape.num_cpus, shape.num_gpus);

  std::ostringstream msg;
  if (o.head) {
    msg << "gantry head started at " << head_address << " (node " << ac.node_id.short_hex() << ", "
        << shape.num_cpus << " CPUs, " << shape.num_gpus << " GPUs)\n"
        << "  session: " << session << "\n"
        << "  drivers on this machine: gantry::init({.address = \"" << head_address << "\"}), or set "
        << "GANTRY_ADDRESS=" << head_address << "\n"
        << "  to add a node, run on it:\n"
        << "    GANTRY_TOKEN=" << cluster_token() << " gantry start --address " << head_address
        << (tls.enabled() ? " --tls-cert CERT --tls-key KEY" + std::string(tls.ca.empty() ? "" : " --tls-ca CA") +
                                "  (a certificate for that node's address, signed by the cluster's CA)"
                          : std::string())
        << "\n"
        << dashboard_note << "  stop with: gantry stop\n";
  } else {
    msg << "gantry node " << ac.node_id.short_hex() << " joined " << head_address << " (" << shape.num_cpus
        << " CPUs, " << shape.num_gpus << " GPUs)\n"
        << "  session: " << session << "\n";
  }
  if (metrics) msg << "  metrics: " << metrics->url() << "/metrics (Authorization: Bearer <cluster token>)\n";
  ready(msg.str());

  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  GANTRY_LOG_INFO("stopping");
  if (metrics) metrics->stop();
  if (dashboard) dashboard->stop();
  agent.stop();
  if (head) head->stop();
  std::error_code ec;
  std::filesystem::remove(session + "/gantry.pid", ec);
  return 0;
}

int start_command(const StartOptions& o) {
  if (o.head == !o.address.empty()) {
    std::cerr << "gantry start: give --head (start a cluster) or --address HOST:PORT (join one)\n";
    return kExitUsage;
  }
  if (o.block) {
    return run_node(o, [](const std::string& msg) { std::cout << msg << std::flush; });
  }
  // Detach: the child runs the node and tells the parent, through a pipe, when it serves
  // (or why it could not start); the parent prints that and exits.
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) throw Error("cannot create a pipe: " + std::string(std::strerror(errno)));
  pid_t pid = ::fork();
  if (pid < 0) throw Error("cannot fork: " + std::string(std::strerror(errno)));
  if (pid == 0) {
    ::close(pipe_fds[0]);
    ::setsid();
    // The node's own messages go to its session log; the terminal hears only the outcome.
    int null_fd = ::open("/dev/null", O_RDWR);
    ::dup2(null_fd, 0);
    ::dup2(null_fd, 1);
    ::dup2(null_fd, 2);
    int report = pipe_fds[1];
    auto tell = [&](const std::string& text) {
      if (::write(report, text.data(), text.size()) < 0) {
        // The starting terminal went away; the node runs on regardless.
      }
      ::close(report);
      report = -1;
    };
    int rc = 0;
    try {
      rc = run_node(o, [&](const std::string& msg) { tell("OK\n" + msg); });
    } catch (const std::exception& e) {
      if (report >= 0) tell(std::string("ERR\n") + e.what() + "\n");
      rc = kExitFailure;
    }
    std::_Exit(rc);
  }
  ::close(pipe_fds[1]);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipe_fds[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  ::close(pipe_fds[0]);
  if (text.rfind("OK\n", 0) == 0) {
    std::cout << text.substr(3) << std::flush;
    return 0;
  }
  std::cerr << "gantry start failed: " << (text.size() > 4 ? text.substr(4) : "the node process exited\n");
  return kExitFailure;
}

// This machine's gantry processes: pid files of sessions under `root` whose process runs
// this same program.
std::vector<std::pair<pid_t, std::string>> local_processes(const std::string& root) {
  std::vector<std::pair<pid_t, std::string>> out;
  std::error_code ec;
  std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    if (entry.is_symlink()) continue;
    std::string pid_text = read_small_file(entry.path() / "gantry.pid");
    if (pid_text.empty()) continue;
    pid_t pid = static_cast<pid_t>(std::atoi(pid_text.c_str()));
    if (pid <= 0 || pid == ::getpid()) continue;
    std::string exe = std::filesystem::read_symlink("/proc/" + pid_text + "/exe", ec).string();
    // A binary replaced since it started reads "<path> (deleted)"; it is still ours.
    const std::string deleted = " (deleted)";
    if (exe.size() > deleted.size() && exe.compare(exe.size() - deleted.size(), deleted.size(), deleted) == 0)
      exe.resize(exe.size() - deleted.size());
    if (ec || exe != self) continue;  // gone, or the pid now belongs to another program
    out.emplace_back(pid, entry.path().string());
  }
  return out;
}

int stop_command(const std::string& temp_dir, int grace_s) {
  std::string root = session_root(temp_dir);
  auto procs = local_processes(root);
  if (procs.empty()) {
    std::cout << "no gantry processes running on this machine (under " << root << ")\n";
    return 0;
  }
  for (const auto& [pid, session] : procs) ::kill(pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace_s);
  size_t killed = 0;
  for (const auto& [pid, session] : procs) {
    while (::kill(pid, 0) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (::kill(pid, 0) == 0) {
      ::kill(pid, SIGKILL);
      ++killed;
    }
    std::error_code ec;
    std::filesystem::remove(session + "/gantry.pid", ec);
  }
  std::cout << "stopped " << procs.size() << " gantry process(es)";
  if (killed) std::cout << " (" << killed << " did not stop within " << grace_s << " s and were killed)";
  std::cout << "\n";
  return 0;
}

std::string amount(const proto::Resources& r, const std::string& name) {
  auto it = r.quantities().find(name);
  double v = it == r.quantities().end() ? 0 : static_cast<double>(it->second) / 10000.0;
  std::ostringstream s;
  if (name == "memory") {
    s.precision(3);
    s << v / (1024.0 * 1024 * 1024);  // GiB
  } else {
    s << v;
  }
  return s.str();
}

// The cluster a command talks to: --address, else GANTRY_ADDRESS, else the head started on
// this machine; sets the token to use. Throws std::invalid_argument when there is none.
std::string resolve_cluster(std::string address, const std::string& temp_dir) {
  std::string root = session_root(temp_dir);
  if (address.empty() && std::getenv("GANTRY_ADDRESS")) address = std::getenv("GANTRY_ADDRESS");
  if (address.empty()) address = latest_head_address(root);
  if (address.empty())
    throw std::invalid_argument("no cluster address and no running head on this machine; pass --address "
                                "HOST:PORT or set GANTRY_ADDRESS");
  const char* env_token = std::getenv("GANTRY_TOKEN");
  set_cluster_token(find_cluster_token(env_token ? env_token : "", address, root));
  set_tls(find_cluster_tls(address, root));
  return address;
}

// Fails with the call's message, adding what to do about the common causes.
[[noreturn]] void call_failed(const std::string& what, const std::string& address, const grpc::Status& s) {
  std::string hint;
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) hint = " (is the head running? `gantry status`)";
  throw Error(what + " at " + address + ": " + s.error_message() + hint);
}

std::string format_time(int64_t ms) {
  if (ms <= 0) return "-";
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

// Prints the dashboard's URL and a one-time login link minted with the cluster token.
int dashboard_command(const std::string& address_flag, const std::string& temp_dir, std::string url, int valid_minutes) {
  std::string address = resolve_cluster(address_flag, temp_dir);
  if (url.empty()) url = dashboard_url_for(session_root(temp_dir), address);
  if (url.empty())
    throw Error("no dashboard URL known for the head at " + address + " (it runs on another machine, or with "
                "--no-dashboard); pass --url http://HOST:PORT");
  while (!url.empty() && url.back() == '/') url.pop_back();
  int64_t expires = std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch()).count() + valid_minutes * 60;
  std::printf("dashboard: %s\n", url.c_str());
  std::printf("one-time login link (valid %d min; it signs this browser in for a day):\n  %s/login?link=%s\n",
              valid_minutes, url.c_str(), make_login_link(cluster_token(), expires).c_str());
  std::printf("API and /metrics: send 'Authorization: Bearer <token>' (the token file of the head's session)\n");
  return 0;
}

// Writes every worker's recent task executions as a Chrome trace.
int timeline_command(const std::string& address_flag, const std::string& temp_dir, std::string output) {
  std::string address = resolve_cluster(address_flag, temp_dir);
  if (output.empty()) {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    ::localtime_r(&t, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "gantry-timeline-%Y%m%d-%H%M%S.json", &tm);
    output = buf;
  }
  std::fprintf(stderr, "gathering task executions from the workers of %s ...\n", address.c_str());
  ClusterSource source(address);
  Json trace;
  try {
    trace = source.timeline();
  } catch (const ApiError& e) {
    throw Error(e.message);
  }
  size_t spans = 0;
  for (const auto& e : trace["traceEvents"]) spans += e["ph"] == "X";
  std::ofstream out(output, std::ios::trunc);
  out << trace.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
  if (!out) throw Error("cannot write " + output);
  std::printf("wrote %zu task span(s) to %s; open it in chrome://tracing or https://ui.perfetto.dev\n", spans,
              output.c_str());
  return 0;
}

int status_command(const std::string& address_flag, const std::string& temp_dir) {
  std::string address = resolve_cluster(address_flag, temp_dir);
  auto head = proto::Head::NewStub(make_channel(address));
  proto::ListNodesReply nodes;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Status s = head->ListNodes(&ctx, proto::Empty(), &nodes);
  if (!s.ok()) call_failed("cannot reach the head", address, s);
  std::printf("cluster %s: %d node(s)\n", address.c_str(), nodes.nodes_size());
  std::printf("%-10s %-11s %-22s %-10s %-10s %-14s %-8s %s\n", "NODE", "STATE", "AGENT", "CPU", "GPU",
              "MEMORY GiB", "WORKERS", "OTHER");
  std::map<std::string, int> demand;
  for (const auto& node : nodes.nodes()) {
    auto agent = proto::NodeAgent::NewStub(make_channel(node.agent_address()));
    proto::NodeStats stats;
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    bool up = node.alive() && agent->GetNodeStats(&c, proto::Empty(), &stats).ok();
    auto used = [&](const std::string& name) {
      if (!up) return std::string("?/") + amount(node.total(), name);
      auto total_it = stats.total().quantities().find(name);
      auto avail_it = stats.available().quantities().find(name);
      int64_t t = total_it == stats.total().quantities().end() ? 0 : total_it->second;
      int64_t a = avail_it == stats.available().quantities().end() ? 0 : avail_it->second;
      proto::Resources u;
      (*u.mutable_quantities())[name] = t - a;
      return amount(u, name) + "/" + amount(stats.total(), name);
    };
    std::string other;
    for (const auto& [name, q] : node.total().quantities())
      if (name != "CPU" && name != "GPU" && name != "memory") other += used(name) + " " + name + " ";
    std::string workers = up ? std::to_string(stats.num_workers()) + " (" + std::to_string(stats.num_idle_workers()) +
                                   " idle)"
                             : "-";
    std::printf("%-10s %-11s %-22s %-10s %-10s %-14s %-8s %s\n",
                UniqueId::from_binary(node.node_id()).short_hex().c_str(),
                !node.alive() ? "dead" : up ? "alive" : "unreachable",
                node.agent_address().c_str(), used("CPU").c_str(), used("GPU").c_str(), used("memory").c_str(),
                workers.c_str(), other.c_str());
    if (up)
      for (const auto& d : stats.pending_demand()) {
        std::string shape;
        for (const auto& [name, q] : d.quantities())
          if (q != 0) shape += (shape.empty() ? "" : ", ") + name + ": " + amount(d, name);
        ++demand["{" + shape + "}"];
      }
  }
  if (demand.empty()) {
    std::printf("pending demand: none\n");
  } else {
    std::printf("pending demand:\n");
    for (const auto& [shape, n] : demand) std::printf("  %s x %d\n", shape.c_str(), n);
  }
  return 0;
}

const char* submission_status(proto::Submission::Status s) {
  switch (s) {
    case proto::Submission::RUNNING: return "RUNNING";
    case proto::Submission::SUCCEEDED: return "SUCCEEDED";
    case proto::Submission::FAILED: return "FAILED";
    case proto::Submission::STOPPED: return "STOPPED";
    default: return "?";
  }
}

std::string joined(const google::protobuf::RepeatedPtrField<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : " ") + p;
  return out;
}

proto::ListSubmissionsReply list_submissions(proto::JobService::Stub& jobs, const std::string& address) {
  proto::ListSubmissionsReply all;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status s = jobs.ListSubmissions(&ctx, proto::Empty(), &all);
  if (!s.ok()) call_failed("cannot list jobs", address, s);
  return all;
}

proto::Submission find_submission(proto::JobService::Stub& jobs, const std::string& address, const std::string& id) {
  proto::ListSubmissionsReply all = list_submissions(jobs, address);
  for (const auto& sub : all.submissions())
    if (sub.id() == id) return sub;
  throw Error("job " + id + " is not known to the head at " + address + " (see `gantry job list`)");
}

// Prints the job's log from `offset`; with `follow`, until the job ends. Returns the
// job's state at the end.
proto::Submission print_logs(proto::JobService::Stub& jobs, const std::string& address, const std::string& id,
                             bool follow) {
  uint64_t offset = 0;
  while (true) {
    proto::JobLogsRequest req;
    req.set_id(id);
    req.set_offset(offset);
    proto::JobLogs logs;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status s = jobs.GetJobLogs(&ctx, req, &logs);
    if (!s.ok()) call_failed("cannot read the logs of " + id, address, s);
    std::fwrite(logs.text().data(), 1, logs.text().size(), stdout);
    std::fflush(stdout);
    offset = logs.next_offset();
    if (!follow || logs.ended()) break;
    if (logs.text().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return find_submission(jobs, address, id);
}

struct JobCommand {
  std::string address, temp_dir, id;
  std::vector<std::string> entrypoint;
  std::vector<std::string> env;
  bool no_wait = false, follow = false;
};

int job_submit(const JobCommand& c) {
  if (c.entrypoint.empty()) throw std::invalid_argument("give the program after --: gantry job submit -- ./prog args");
  std::string address = resolve_cluster(c.address, c.temp_dir);
  auto jobs = proto::JobService::NewStub(make_channel(address));
  proto::SubmitJobRequest req;
  for (const auto& a : c.entrypoint) req.add_entrypoint(a);
  // A program given by path runs from the submitter's working directory, which the
  // head's machine must have too.
  std::error_code ec;
  req.set_working_dir(std::filesystem::current_path(ec).string());
  for (const auto& kv : c.env) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw std::invalid_argument("--env takes NAME=VALUE, got '" + kv + "'");
    (*req.mutable_environment())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  proto::Submission sub;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status s = jobs->SubmitJob(&ctx, req, &sub);
  if (!s.ok()) call_failed("the head refused the job", address, s);
  std::cerr << "submitted " << sub.id() << " (pid " << sub.pid() << " on the head's machine)\n";
  if (c.no_wait) {
    std::cout << sub.id() << "\n";
    return 0;
  }
  proto::Submission end = print_logs(*jobs, address, sub.id(), /*follow=*/true);
  std::cerr << sub.id() << " " << submission_status(end.status()) << ": " << end.message() << "\n";
  return end.status() == proto::Submission::SUCCEEDED ? 0 : kExitFailure;
}

int job_list(const JobCommand& c) {
  std::string address = resolve_cluster(c.address, c.temp_dir);
  auto jobs = proto::JobService::NewStub(make_channel(address));
  proto::ListSubmissionsReply all = list_submissions(*jobs, address);
  std::printf("%-14s %-10s %-6s %-20s %s\n", "ID", "STATUS", "EXIT", "STARTED", "ENTRYPOINT");
  for (const auto& sub : all.submissions())
    std::printf("%-14s %-10s %-6s %-20s %s\n", sub.id().c_str(), submission_status(sub.status()),
                sub.status() == proto::Submission::RUNNING ? "-" : std::to_string(sub.exit_code()).c_str(),
                format_time(sub.start_time_ms()).c_str(), joined(sub.entrypoint()).c_str());
  return 0;
}

int job_logs(const JobCommand& c) {
  std::string address = resolve_cluster(c.address, c.temp_dir);
  auto jobs = proto::JobService::NewStub(make_channel(address));
  print_logs(*jobs, address, c.id, c.follow);
  return 0;
}

int job_stop(const JobCommand& c) {
  std::string address = resolve_cluster(c.address, c.temp_dir);
  auto jobs = proto::JobService::NewStub(make_channel(address));
  proto::SubmissionRequest req;
  req.set_id(c.id);
  proto::Submission sub;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status s = jobs->StopJob(&ctx, req, &sub);
  if (!s.ok()) call_failed("cannot stop " + c.id, address, s);
  if (sub.status() != proto::Submission::RUNNING) {
    std::cout << c.id << " had already ended: " << submission_status(sub.status()) << "\n";
    return 0;
  }
  // Wait for it to go (the head kills it after a grace period).
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (find_submission(*jobs, address, c.id).status() != proto::Submission::RUNNING) {
      std::cout << c.id << " stopped\n";
      return 0;
    }
  }
  std::cerr << c.id << " is still running\n";
  return kExitFailure;
}

int list_command(const std::string& what, const std::string& address_flag, const std::string& temp_dir) {
  std::string address = resolve_cluster(address_flag, temp_dir);
  auto head = proto::Head::NewStub(make_channel(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (what == "nodes") {
    proto::ListNodesReply nodes;
    grpc::Status s = head->ListNodes(&ctx, proto::Empty(), &nodes);
    if (!s.ok()) call_failed("cannot list nodes", address, s);
    std::printf("%-34s %-22s %-16s %s\n", "NODE ID", "AGENT", "HOST", "RESOURCES");
    for (const auto& n : nodes.nodes()) {
      std::string res;
      for (const auto& [name, q] : n.total().quantities())
        if (name != "memory") res += name + "=" + amount(n.total(), name) + " ";
      res += "memory=" + amount(n.total(), "memory") + "GiB";
      std::printf("%-34s %-22s %-16s %s\n", UniqueId::from_binary(n.node_id()).hex().c_str(),
                  n.agent_address().c_str(), n.hostname().c_str(), res.c_str());
    }
  } else if (what == "actors") {
    proto::ListActorsReply actors;
    grpc::Status s = head->ListActors(&ctx, proto::Empty(), &actors);
    if (!s.ok()) call_failed("cannot list actors", address, s);
    static const char* kStates[] = {"PENDING", "ALIVE", "RESTARTING", "DEAD"};
    std::printf("%-34s %-10s %-20s %-16s %-8s %-9s %s\n", "ACTOR ID", "STATE", "CLASS", "NAME", "PID", "RESTARTS",
                "LIFETIME");
    for (const auto& a : actors.actors())
      std::printf("%-34s %-10s %-20s %-16s %-8d %-9d %s\n", UniqueId::from_binary(a.actor_id()).hex().c_str(),
                  kStates[std::clamp<int>(a.state(), 0, 3)], a.class_name().c_str(),
                  a.name().empty() ? "-" : a.name().c_str(), a.pid(), a.num_restarts(),
                  a.detached() ? "detached" : "job");
  } else if (what == "placement-groups") {
    proto::ListPlacementGroupsReply groups;
    grpc::Status s = head->ListPlacementGroups(&ctx, proto::Empty(), &groups);
    if (!s.ok()) call_failed("cannot list placement groups", address, s);
    static const char* kStates[] = {"PENDING", "CREATED", "REMOVED", "RESCHEDULING"};
    static const char* kStrategies[] = {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"};
    std::printf("%-34s %-12s %-13s %-16s %s\n", "PLACEMENT GROUP ID", "STATE", "STRATEGY", "NAME", "BUNDLES (resources @ node)");
    for (const auto& g : groups.groups()) {
      std::string bundles;
      for (int i = 0; i < g.spec().bundles_size(); ++i) {
        std::string res;
        for (const auto& [name, q] : g.spec().bundles(i).quantities())
          res += (res.empty() ? "" : ",") + name + "=" + amount(g.spec().bundles(i), name);
        std::string node = i < g.bundle_node_ids_size() && !g.bundle_node_ids(i).empty()
                               ? UniqueId::from_binary(g.bundle_node_ids(i)).short_hex()
                               : "-";
        bundles += (bundles.empty() ? "" : " ") + std::to_string(i) + ":{" + res + "}@" + node;
      }
      std::printf("%-34s %-12s %-13s %-16s %s\n", UniqueId::from_binary(g.spec().group_id()).hex().c_str(),
                  kStates[std::clamp<int>(g.state(), 0, 3)], kStrategies[std::clamp<int>(g.spec().strategy(), 0, 3)],
                  g.spec().name().empty() ? "-" : g.spec().name().c_str(), bundles.c_str());
      if (!g.message().empty()) std::printf("%-34s %s\n", "", g.message().c_str());
    }
  } else {
    proto::ListJobsReply jobs;
    grpc::Status s = head->ListJobs(&ctx, proto::Empty(), &jobs);
    if (!s.ok()) call_failed("cannot list jobs", address, s);
    std::printf("%-34s %-9s %-8s %-20s %s\n", "JOB ID", "STATE", "PID", "STARTED", "EXECUTABLE");
    for (const auto& j : jobs.jobs())
      std::printf("%-34s %-9s %-8d %-20s %s\n", UniqueId::from_binary(j.job_id()).hex().c_str(),
                  j.state() == proto::JobSpec::RUNNING ? "RUNNING" : "FINISHED", j.driver_pid(),
                  format_time(j.start_time_ms()).c_str(), j.executable().c_str());
  }
  return 0;
}

// `gantry train ...` and `gantry tune ...` run gantry-train and gantry-tune, installed
// next to this program: the launcher is a gantry driver (its workers are copies of it),
// which this command is not, and the sweep tools link gantry::tune. Returns only on
// failure.
int sibling_command(const std::string& command, const std::vector<std::string>& args) {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::string program = (self.parent_path() / ("gantry-" + command)).string();
  std::vector<std::string> argv = {program};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> pointers;
  for (std::string& arg : argv) pointers.push_back(arg.data());
  pointers.push_back(nullptr);
  ::execv(program.c_str(), pointers.data());
  std::cerr << "gantry " << command << ": cannot run " << program << ": " << std::strerror(errno) << " (gantry-"
            << command << " is built and installed next to gantry)\n";
  return kExitFailure;
}

// A check that a numeric flag is `min` or more. CLI11's NonNegativeNumber and
// PositiveNumber would name their upper bound, the largest double, in full: a 309-digit
// number that says nothing to the user.
CLI::Validator at_least(int min) {
  std::string bound = std::to_string(min) + " or more";
  // What --help shows after the flag's type, as CLI11's own checks name themselves.
  std::string help = min == 0 ? "NONNEGATIVE" : min == 1 ? "POSITIVE" : ">= " + std::to_string(min);
  return CLI::Validator(
      [min, bound](std::string& input) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(input, value)) return "must be a number " + bound + ", not '" + input + "'";
        if (value < min) return "must be " + bound + ", not " + input;
        return {};
      },
      help);
}

int run(int argc, char** argv) {
  CLI::App app{"gantry: run C++ and LibTorch work on a cluster of machines and GPUs"};
  app.require_subcommand(1);
  StartOptions start;
  auto* start_cmd = app.add_subcommand("start", "start this machine's part of a cluster: the head, or a node joining one");
  start_cmd->add_flag("--head", start.head, "start a new cluster: the head and a node agent on this machine");
  start_cmd->add_option("--address", start.address, "join the cluster whose head is at HOST:PORT");
  start_cmd->add_option("--port", start.port, "the head's port (with --head)")->capture_default_str()->check(CLI::Range(1, 65535));
  start_cmd->add_option("--num-cpus", start.num_cpus, "CPUs this node offers (default: its cores)")->check(at_least(0));
  start_cmd->add_option("--num-gpus", start.num_gpus, "GPUs this node offers (default: detected; a number declares logical GPUs)")->check(at_least(0));
  start_cmd->add_option("--resources", start.resources, "custom resources as JSON, e.g. '{\"A\": 2}'")->capture_default_str();
  start_cmd->add_option("--object-store-memory", start.object_store_memory, "bytes of shared memory for large objects (default: 30% of memory)")->check(at_least(0));
  start_cmd->add_option("--node-ip-address", start.node_ip, "the address other machines reach this node by (default: the host name's first non-loopback IPv4 address)");
  start_cmd->add_option("--temp-dir", start.temp_dir, "where session directories go (default: $TMPDIR/gantry or /tmp/gantry)");
  start_cmd->add_option("--log-level", start.log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  start_cmd->add_option("--allowed-executables", start.allowed_executables, "run only jobs whose executable is under one of these directories (default: any)")->delimiter(',');
  start_cmd->add_option("--node-timeout", start.node_timeout_s, "seconds a node may miss health checks before the head declares it dead (with --head)")->capture_default_str()->check(CLI::Range(0.2, 3600.0));
  start_cmd->add_option("--tls-cert", start.tls_cert, "PEM certificate (chain) of this node: all TCP traffic of the cluster then uses TLS")->check(CLI::ExistingFile);
  start_cmd->add_option("--tls-key", start.tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);
  start_cmd->add_option("--tls-ca", start.tls_ca, "PEM certificate of the CA that signed the nodes' certificates (default: --tls-cert is self-signed and its own CA)")->check(CLI::ExistingFile);
  start_cmd->add_option("--dashboard-port", start.dashboard_port, "the dashboard's HTTP port (with --head; 0 picks a free one)")->capture_default_str()->check(CLI::Range(0, 65535));
  start_cmd->add_option("--dashboard-host", start.dashboard_host, "the address the dashboard listens on; 0.0.0.0 for every interface (it always requires the cluster token)")->capture_default_str();
  start_cmd->add_flag("--no-dashboard", start.no_dashboard, "serve no dashboard");
  start_cmd->add_option("--metrics-port", start.metrics_port, "serve this node's Prometheus metrics on this port (0 picks a free one; default: none)")->check(CLI::Range(0, 65535));
  start_cmd->add_option("--metrics-host", start.metrics_host, "the address the metrics endpoint listens on")->capture_default_str();
  start_cmd->add_flag("--block", start.block, "stay in the foreground until interrupted instead of detaching");

  std::string stop_temp_dir;
  int grace_s = 10;
  auto* stop_cmd = app.add_subcommand("stop", "stop the gantry processes of this machine (and nothing else)");
  stop_cmd->add_option("--temp-dir", stop_temp_dir, "the --temp-dir they were started with");
  stop_cmd->add_option("--grace", grace_s, "seconds to wait before killing a process that does not stop")->capture_default_str()->check(at_least(0));

  std::string status_address, status_temp_dir;
  auto* status_cmd = app.add_subcommand("status", "show the cluster's nodes, their resources and pending demand");
  status_cmd->add_option("--address", status_address, "the head's HOST:PORT (default: GANTRY_ADDRESS, else the head started on this machine)");
  status_cmd->add_option("--temp-dir", status_temp_dir, "where this machine's sessions are (to find the address and token)");

  JobCommand job;
  auto* job_cmd = app.add_subcommand("job", "run programs on the cluster from the head's machine");
  job_cmd->require_subcommand(1);
  auto add_common = [&](CLI::App* cmd) {
    cmd->add_option("--address", job.address, "the head's HOST:PORT (default: GANTRY_ADDRESS, else the head started on this machine)");
    cmd->add_option("--temp-dir", job.temp_dir, "where this machine's sessions are (to find the address and token)");
  };
  auto* submit_cmd = job_cmd->add_subcommand("submit", "run a program as a driver of the cluster; follows its output until it ends");
  add_common(submit_cmd);
  submit_cmd->add_flag("--no-wait", job.no_wait, "print the job id and return at once");
  submit_cmd->add_option("--env", job.env, "NAME=VALUE added to the program's environment (repeatable)");
  submit_cmd->add_option("entrypoint", job.entrypoint, "the program and its arguments, after --")->required();
  auto* jlist_cmd = job_cmd->add_subcommand("list", "list submitted jobs");
  add_common(jlist_cmd);
  auto* logs_cmd = job_cmd->add_subcommand("logs", "print a submitted job's output");
  add_common(logs_cmd);
  logs_cmd->add_option("id", job.id, "the job id (from submit or list)")->required();
  logs_cmd->add_flag("-f,--follow", job.follow, "keep printing until the job ends");
  auto* jstop_cmd = job_cmd->add_subcommand("stop", "stop a submitted job (SIGTERM to its process group, SIGKILL after 3 s)");
  add_common(jstop_cmd);
  jstop_cmd->add_option("id", job.id, "the job id")->required();

  std::string list_what, list_address, list_temp_dir;
  int list_limit = 100;
  auto* list_cmd = app.add_subcommand("list", "list the cluster's nodes, actors, tasks, objects, placement groups or drivers' jobs");
  list_cmd->add_option("what", list_what, "nodes, actors, tasks, objects, placement-groups or jobs")->required()->check(CLI::IsMember({"nodes", "actors", "tasks", "objects", "placement-groups", "jobs"}));
  list_cmd->add_option("--limit", list_limit, "at most this many tasks or objects")->capture_default_str()->check(at_least(1));
  list_cmd->add_option("--address", list_address, "the head's HOST:PORT (default: GANTRY_ADDRESS, else the head started on this machine)");
  list_cmd->add_option("--temp-dir", list_temp_dir, "where this machine's sessions are (to find the address and token)");

  std::string dash_address, dash_temp_dir, dash_url;
  int dash_valid = 10;
  auto* dash_cmd = app.add_subcommand("dashboard", "print the dashboard's URL with a one-time login link");
  dash_cmd->add_option("--address", dash_address, "the head's HOST:PORT (default: GANTRY_ADDRESS, else the head started on this machine)");
  dash_cmd->add_option("--temp-dir", dash_temp_dir, "where this machine's sessions are (to find the address, token and URL)");
  dash_cmd->add_option("--url", dash_url, "the dashboard's URL, for a head on another machine (http://HOST:PORT)");
  dash_cmd->add_option("--valid", dash_valid, "minutes the link stays usable")->capture_default_str()->check(CLI::Range(1, 1440));
  std::string tl_address, tl_temp_dir, tl_output;
  auto* timeline_cmd = app.add_subcommand("timeline", "write the workers' recent task executions as a Chrome trace (chrome://tracing, Perfetto)");
  timeline_cmd->add_option("--address", tl_address, "the head's HOST:PORT (default: GANTRY_ADDRESS, else the head started on this machine)");
  timeline_cmd->add_option("--temp-dir", tl_temp_dir, "where this machine's sessions are (to find the address and token)");
  timeline_cmd->add_option("-o,--output", tl_output, "the file to write (default gantry-timeline-DATE-TIME.json)");

  auto* train_cmd = app.add_subcommand("train", "run training programs on the cluster: gantry train launch --help");
  train_cmd->prefix_command();  // everything after `train`, --help included, goes to gantry-train
  train_cmd->set_help_flag();
  auto* tune_cmd = app.add_subcommand("tune", "look at hyperparameter sweeps: gantry tune status PATH");
  tune_cmd->prefix_command();  // everything after `tune` goes to gantry-tune
  tune_cmd->set_help_flag();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  try {
    if (train_cmd->parsed()) return sibling_command("train", train_cmd->remaining());
    if (tune_cmd->parsed()) return sibling_command("tune", tune_cmd->remaining());
    if (start_cmd->parsed()) {
      if (start.resources.empty()) start.resources = "{}";
      parse_resources(start.resources);  // a bad value is a usage error, before anything starts
      return start_command(start);
    }
    // Not before `start`: that forks, and gRPC's threads must not exist across a fork.
    keep_grpc_for_process();
    if (stop_cmd->parsed()) return stop_command(stop_temp_dir, grace_s);
    if (status_cmd->parsed()) return status_command(status_address, status_temp_dir);
    if (dash_cmd->parsed()) return dashboard_command(dash_address, dash_temp_dir, dash_url, dash_valid);
    if (timeline_cmd->parsed()) return timeline_command(tl_address, tl_temp_dir, tl_output);
    if (submit_cmd->parsed()) return job_submit(job);
    if (jlist_cmd->parsed()) return job_list(job);
    if (logs_cmd->parsed()) return job_logs(job);
    if (jstop_cmd->parsed()) return job_stop(job);
    if (list_cmd->parsed() && (list_what == "tasks" || list_what == "objects"))
      return list_owned_command(list_what, resolve_cluster(list_address, list_temp_dir), list_limit);
    if (list_cmd->parsed()) return list_command(list_what, list_address, list_temp_dir);
  } catch (const std::invalid_argument& e) {
    std::cerr << "gantry: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "gantry: " << e.what() << "\n";
    return kExitFailure;
  }
  return kExitUsage;
}

}  // namespace
}  // namespace gantry::internal

int main(int argc, char** argv) { return gantry::internal::run(argc, argv); }
