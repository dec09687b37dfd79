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
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "agent/node_agent.h"
#include "common/logging.h"
#include "gantry/errors.h"
#include "head/head_service.h"
#include "rpc/auth.h"
#include "rpc/grpc_util.h"
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

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

volatile sig_atomic_t g_stop = 0;
void on_stop_signal(int) { g_stop = 1; }

// Runs head (with --head) and node agent until SIGTERM or SIGINT. `ready` is called once
// they serve, with the lines to print; it may fork-detach the caller.
int run_node(const StartOptions& o, const std::function<void(const std::string&)>& ready) {
  NodeShape shape = make_node_shape(o.num_cpus, o.num_gpus, parse_resources(o.resources));
  std::string session = create_session_dir(o.temp_dir);
  setup_logging(o.log_level, session + "/logs/gantry.log", o.head ? "head" : "agent");
  std::string ip = o.node_ip.empty() ? default_node_ip() : o.node_ip;
  std::string root = session_root(o.temp_dir);

  std::unique_ptr<HeadService> head;
  std::string head_address = o.address;
  if (o.head) {
    set_cluster_token(!std::getenv("GANTRY_TOKEN") || !*std::getenv("GANTRY_TOKEN") ? generate_token()
                                                                                     : std::getenv("GANTRY_TOKEN"));
    head_address = ip + ":" + std::to_string(o.port);
    head = std::make_unique<HeadService>("0.0.0.0:" + std::to_string(o.port));
    head->start();
  } else {
    const char* env_token = std::getenv("GANTRY_TOKEN");
    set_cluster_token(find_cluster_token(env_token ? env_token : "", head_address, root));
  }
  write_token_file(session + "/token", cluster_token());

  NodeAgentConfig ac = make_agent_config(session, shape, o.object_store_memory, ip + ":0", head_address);
  ac.allowed_executable_dirs = o.allowed_executables;
  NodeAgent agent(ac);
  agent.start();
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
        << "    GANTRY_TOKEN=" << cluster_token() << " gantry start --address " << head_address << "\n"
        << "  stop with: gantry stop\n";
  } else {
    msg << "gantry node " << ac.node_id.short_hex() << " joined " << head_address << " (" << shape.num_cpus
        << " CPUs, " << shape.num_gpus << " GPUs)\n"
        << "  session: " << session << "\n";
  }
  ready(msg.str());

  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  GANTRY_LOG_INFO("stopping");
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
    std::string pid_text = read_file((entry.path() / "gantry.pid").string());
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
  if (name == "memory") s.precision(3), s << v / (1024.0 * 1024 * 1024);
  else s << v;
  return s.str();
}

int status_command(std::string address, const std::string& temp_dir) {
  std::string root = session_root(temp_dir);
  if (address.empty() && std::getenv("GANTRY_ADDRESS")) address = std::getenv("GANTRY_ADDRESS");
  if (address.empty()) address = latest_head_address(root);
  if (address.empty()) {
    std::cerr << "gantry status: no cluster address; pass --address HOST:PORT or set GANTRY_ADDRESS\n";
    return kExitUsage;
  }
  const char* env_token = std::getenv("GANTRY_TOKEN");
  set_cluster_token(find_cluster_token(env_token ? env_token : "", address, root));
  auto head = proto::Head::NewStub(make_channel(address));
  proto::ListNodesReply nodes;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Status s = head->ListNodes(&ctx, proto::Empty(), &nodes);
  if (!s.ok()) {
    std::cerr << "gantry status: cannot reach the head at " << address << ": " << s.error_message() << "\n";
    return kExitFailure;
  }
  std::printf("cluster %s: %d node(s)\n", address.c_str(), nodes.nodes_size());
  std::printf("%-10s %-11s %-22s %-10s %-10s %-14s %-8s %s\n", "NODE", "STATE", "AGENT", "CPU", "GPU",
              "MEMORY GiB", "WORKERS", "OTHER");
  std::map<std::string, int> demand;
  for (const auto& node : nodes.nodes()) {
    auto agent = proto::NodeAgent::NewStub(make_channel(node.agent_address()));
    proto::NodeStats stats;
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    bool up = agent->GetNodeStats(&c, proto::Empty(), &stats).ok();
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
                UniqueId::from_binary(node.node_id()).short_hex().c_str(), up ? "alive" : "unreachable",
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

int run(int argc, char** argv) {
  CLI::App app{"gantry: run C++ and LibTorch work on a cluster of machines and GPUs"};
  app.require_subcommand(1);
  StartOptions start;
  auto* start_cmd = app.add_subcommand("start", "start this machine's part of a cluster: the head, or a node joining one");
  start_cmd->add_flag("--head", start.head, "start a new cluster: the head and a node agent on this machine");
  start_cmd->add_option("--address", start.address, "join the cluster whose head is at HOST:PORT");
  start_cmd->add_option("--port", start.port, "the head's port (with --head)")->capture_default_str()->check(CLI::Range(1, 65535));
  start_cmd->add_option("--num-cpus", start.num_cpus, "CPUs this node offers (default: its cores)")->check(CLI::NonNegativeNumber);
  start_cmd->add_option("--num-gpus", start.num_gpus, "GPUs this node offers (default: detected; a number declares logical GPUs)")->check(CLI::NonNegativeNumber);
  start_cmd->add_option("--resources", start.resources, "custom resources as JSON, e.g. '{\"A\": 2}'")->capture_default_str();
  start_cmd->add_option("--object-store-memory", start.object_store_memory, "bytes of shared memory for large objects (default: 30% of memory)");
  start_cmd->add_option("--node-ip-address", start.node_ip, "the address other machines reach this node by (default: the host name's first non-loopback IPv4 address)");
  start_cmd->add_option("--temp-dir", start.temp_dir, "where session directories go (default: $TMPDIR/gantry or /tmp/gantry)");
  start_cmd->add_option("--log-level", start.log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  start_cmd->add_option("--allowed-executables", start.allowed_executables, "run only jobs whose executable is under one of these directories (default: any)")->delimiter(',');
  start_cmd->add_flag("--block", start.block, "stay in the foreground until interrupted instead of detaching");

  std::string stop_temp_dir;
  int grace_s = 10;
  auto* stop_cmd = app.add_subcommand("stop", "stop the gantry processes of this machine (and nothing else)");
  stop_cmd->add_option("--temp-dir", stop_temp_dir, "the --temp-dir they were started with");
  stop_cmd->add_option("--grace", grace_s, "seconds to wait before killing a process that does not stop")->capture_default_str();

  std::string status_address, status_temp_dir;
  auto* status_cmd = app.add_subcommand("status", "show the cluster's nodes, their resources and pending demand");
  status_cmd->add_option("--address", status_address, "the head's HOST:PORT (default: GANTRY_ADDRESS, else the head started on this machine)");
  status_cmd->add_option("--temp-dir", status_temp_dir, "where this machine's sessions are (to find the address and token)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  try {
    if (start_cmd->parsed()) {
      if (start.resources.empty()) start.resources = "{}";
      parse_resources(start.resources);  // a bad value is a usage error, before anything starts
      return start_command(start);
    }
    if (stop_cmd->parsed()) return stop_command(stop_temp_dir, grace_s);
    if (status_cmd->parsed()) return status_command(status_address, status_temp_dir);
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
