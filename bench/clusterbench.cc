// Cross-node figures: a real two-node cluster on this machine (a head and a second node
// started with the `gantry` command, on loopback TCP), each figure printed next to a
// plain TCP baseline measured over the same loopback in the same run.
//
//     gantry_clusterbench              # each figure for about 2 s
//     gantry_clusterbench --quick      # about 0.3 s each (the smoke test)
//     gantry_clusterbench --huge       # also one 4 GiB object (needs about 16 GiB of memory)
//
// Both nodes share this machine's cores and memory, so the figures show the overhead of
// gantry's path against the bare socket, not a network's speed.

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "gantry/gantry.h"
#include "support/shell.h"

namespace {

int no_op() { return 1; }
GANTRY_REMOTE(no_op);

std::vector<uint8_t> make_bytes(int64_t n) { return std::vector<uint8_t>(static_cast<size_t>(n), 7); }
GANTRY_REMOTE(make_bytes);

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr int64_t kObjectBytes = 256ll << 20;
constexpr int kTaskBatch = 1000;
constexpr size_t kMessageBytes = 200;  // about a small task spec and its result

using gantry::test_support::CommandResult;
using gantry::test_support::free_port;
using gantry::test_support::run;

// A connected TCP pair over loopback: {client, server}.
std::pair<int, int> tcp_pair() {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = gantry::test_support::bind_loopback(listener);
  ::listen(listener, 1);
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  if (::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw std::runtime_error("connect");
  int server = ::accept(listener, nullptr, nullptr);
  ::close(listener);
  int one = 1;
  ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return {client, server};
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_all(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Messages of kMessageBytes echoed back, kTaskBatch in flight at a time: per second.
double tcp_messages_per_second(double seconds) {
  std::pair<int, int> fds = tcp_pair();  // not a structured binding: lambdas capture it
  int client = fds.first, server = fds.second;
  std::thread echo([fd = server] {
    std::vector<char> m(kMessageBytes);
    while (read_all(fd, m.data(), m.size()) && write_all(fd, m.data(), m.size())) {
    }
    ::close(fd);
  });
  // One buffer per side: the reader thread writes into its buffer while this thread
  // sends from the other.
  std::vector<char> batch(kMessageBytes * kTaskBatch, 'm'), replies(batch.size());
  int64_t done = 0;
  auto start = Clock::now();
  while (seconds_since(start) < seconds) {
    std::thread reader([&] { read_all(client, replies.data(), replies.size()); });
    write_all(client, batch.data(), batch.size());
    reader.join();
    done += kTaskBatch;
  }
  double rate = done / seconds_since(start);
  ::shutdown(client, SHUT_RDWR);
  echo.join();
  ::close(client);
  return rate;
}

// kObjectBytes written by one thread and read into a buffer by another: GB/s.
double tcp_gigabytes_per_second(double seconds) {
  std::pair<int, int> fds = tcp_pair();
  int client = fds.first, server = fds.second;
  std::vector<char> source(kObjectBytes, 's'), sink(kObjectBytes);
  int64_t bytes = 0;
  auto start = Clock::now();
  while (seconds_since(start) < seconds) {
    std::thread reader([&] { read_all(server, sink.data(), sink.size()); });
    write_all(client, source.data(), source.size());
    reader.join();
    bytes += kObjectBytes;
  }
  double rate = bytes / 1e9 / seconds_since(start);
  ::close(client);
  ::close(server);
  return rate;
}

void print(const std::string& name, double value, const std::string& unit, const std::string& baseline_name,
           double baseline) {
  std::printf("%-34s %12.2f %-8s (%s %.2f, ratio %.2f)\n", name.c_str(), value, unit.c_str(), baseline_name.c_str(),
              baseline, value / baseline);
  std::fflush(stdout);
}

// Resident anonymous memory of process `pid` in KiB (RssAnon), or -1.
int64_t anon_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::atoll(line.c_str() + 8);
  return -1;
}

// One 4 GiB object from the other node, with the agents' anonymous memory sampled while
// it crosses: a transfer that buffered the object would show up there.
template <typename Maker>
void huge_object(Maker& maker, const std::string& temp, double tcp_gbps) {
  const int64_t bytes = int64_t{4} << 30;
  std::vector<pid_t> agents;
  for (const auto& entry : std::filesystem::directory_iterator(temp)) {
    if (entry.is_symlink()) continue;  // "session_latest" names one of the others
    std::ifstream pid_file(entry.path() / "gantry.pid");
    pid_t pid = 0;
    if (pid_file >> pid) agents.push_back(pid);
  }
  auto ref = maker.remote(bytes);
  gantry::wait(std::vector<gantry::ObjectRef<std::vector<uint8_t>>>{ref}, 1, std::nullopt);
  std::vector<int64_t> before, peak;
  for (pid_t pid : agents) {
    before.push_back(anon_kib(pid));
    peak.push_back(before.back());
  }
  std::atomic<bool> done{false};
  std::thread sampler([&] {
    while (!done) {
      for (size_t i = 0; i < agents.size(); ++i) peak[i] = std::max(peak[i], anon_kib(agents[i]));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  auto t = Clock::now();
  std::vector<uint8_t> v = ref.get();
  double secs = seconds_since(t);
  done = true;
  sampler.join();
  if (v.size() != static_cast<size_t>(bytes) || v[bytes - 1] != 7) throw std::runtime_error("bad 4 GiB object");
  print("cross_node_4gib_object_gigabytes", bytes / 1e9 / secs, "GB/s", "tcp_loopback_gigabytes", tcp_gbps);
  for (size_t i = 0; i < agents.size(); ++i)
    std::printf("#   agent pid %d: anonymous memory %.0f MiB before, %.0f MiB at most during the pull\n", agents[i],
                before[i] / 1024.0, peak[i] / 1024.0);
}

}  // namespace

int main(int argc, char** argv) {
  // Workers of the cluster run this same program: in them init serves tasks, never returns.
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  double seconds = 2.0;
  bool huge = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--quick") {
      seconds = 0.3;
    } else if (arg == "--huge") {
      huge = true;
    } else if (arg == "--help" || arg == "-h") {
      std::cout << "usage: gantry_clusterbench [--quick] [--huge]\n"
                   "Starts a head and a second node on loopback with the gantry command, then prints\n"
                   "cross-node task throughput and object transfer next to plain TCP baselines.\n";
      return 0;
    } else {
      std::cerr << "gantry_clusterbench: unknown argument '" << arg << "'; see --help\n";
      return 2;
    }
  }
  std::string temp = "/tmp/gcb" + std::to_string(::getpid());
  std::string cli = std::string(GANTRY_CLI_PATH);
  std::string address = "127.0.0.1:" + std::to_string(free_port());
  CommandResult head = run(cli + " start --head --node-ip-address 127.0.0.1 --num-cpus 1 --port " +
                           address.substr(address.find(':') + 1) + " --temp-dir " + temp);
  if (head.code != 0) {
    std::cerr << "cannot start the head:\n" << head.out;
    return 1;
  }
  CommandResult node =
      run(cli + " start --address " + address + " --node-ip-address 127.0.0.1 --num-cpus 2 --temp-dir " + temp);
  std::smatch m;
  int rc = 0;
  if (node.code != 0 || !std::regex_search(node.out, m, std::regex("gantry node ([0-9a-f]{8}) joined"))) {
    std::cerr << "cannot start the second node:\n" << node.out;
    rc = 1;
  } else {
    try {
      gantry::init({.temp_dir = temp, .address = address});
      std::string other;
      for (const auto& n : gantry::nodes())
        if (n.node_id != gantry::runtime_context().node_id) other = n.node_id;
      auto there = gantry::SchedulingStrategy::node_affinity(other);
      std::printf("two nodes on loopback; driver on the head's node, work on node %s\n", m[1].str().c_str());

      double tcp_messages = tcp_messages_per_second(seconds);
      auto task = gantry::task(no_op).options({.num_cpus = 0.5, .scheduling = there});
      task.remote().get();  // warm: lease and worker on the other node
      int64_t done = 0;
      auto start = Clock::now();
      while (seconds_since(start) < seconds) {
        std::vector<gantry::ObjectRef<int>> refs;
        refs.reserve(kTaskBatch);
        for (int i = 0; i < kTaskBatch; ++i) refs.push_back(task.remote());
        for (auto& r : gantry::get(refs)) done += r;
      }
      print("cross_node_tasks_async", done / seconds_since(start), "tasks/s", "tcp_loopback_messages_per_s",
            tcp_messages);

      double tcp_gbps = tcp_gigabytes_per_second(seconds);
      auto maker = gantry::task(make_bytes).options({.num_cpus = 0.5, .scheduling = there});
      int64_t bytes = 0;
      double pulling = 0;
      auto wall = Clock::now();
      while (seconds_since(wall) < seconds || bytes == 0) {
        auto ref = maker.remote(kObjectBytes);
        gantry::wait(std::vector<gantry::ObjectRef<std::vector<uint8_t>>>{ref}, 1, std::nullopt);
        auto t = Clock::now();
        std::vector<uint8_t> v = ref.get();  // pulled from the other node's store
        pulling += seconds_since(t);
        if (v.size() != static_cast<size_t>(kObjectBytes) || v[12345] != 7) throw std::runtime_error("bad object");
        bytes += kObjectBytes;
      }
      print("cross_node_object_gigabytes", bytes / 1e9 / pulling, "GB/s", "tcp_loopback_gigabytes", tcp_gbps);
      if (huge) huge_object(maker, temp, tcp_gbps);
      gantry::shutdown();
    } catch (const std::exception& e) {
      std::cerr << "gantry_clusterbench: " << e.what() << "\n";
      rc = 1;
    }
  }
  run(cli + " stop --temp-dir " + temp);
  std::error_code ec;
  std::filesystem::remove_all(temp, ec);
  return rc;
}
