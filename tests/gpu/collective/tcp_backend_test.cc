// Tests of the TCP backend. Ranks are threads of this process sharing one FakeStore and
// talking TCP over 127.0.0.1, except the peer-death tests, which fork real processes that
// meet through a directory of files (and run first, before any thread exists). Intruders
// are plain sockets of the test that reach a rank's listener without the group secret.

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "collective/backend.h"
#include "collective/fake_store.h"
#include "collective/reduce_kernels.h"

namespace col = gantry::collective;
using namespace gantry::collective::detail;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using col::CollectiveError;
using col::DataType;
using col::ReduceOp;

namespace {

constexpr DataType kAllTypes[] = {DataType::kFloat32, DataType::kFloat64, DataType::kFloat16, DataType::kBFloat16,
                                  DataType::kInt32,   DataType::kInt64,   DataType::kUInt8};
constexpr ReduceOp kAllOps[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax, ReduceOp::kProduct};
// 37 and 1001 are odd and divisible by none of 2, 3, 4.
constexpr size_t kCounts[] = {0, 1, 37, 1001};
// About a million elements: many staging buffers and socket buffers' worth per ring step.
constexpr size_t kLargeCount = size_t{1} << 20;

std::string contains_msg(const std::string& text, const std::string& part) {
  return "'" + text + "' lacks '" + part + "'";
}
#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << contains_msg(text, part)

// Element `index` of rank `rank`'s input: a small integer (in [-4, 4], or [0, 8] for
// uint8), so every reduction over up to four ranks is exact in every type, in any order.
int input_value(int rank, size_t index, DataType type) {
  int v = static_cast<int>((static_cast<size_t>(rank) * 7 + index * 13) % 9) - 4;
  return type == DataType::kUInt8 ? v + 4 : v;
}

void store_value(void* base, size_t i, DataType type, double v) {
  switch (type) {
    case DataType::kFloat32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      return;
    case DataType::kFloat64:
      static_cast<double*>(base)[i] = v;
      return;
    case DataType::kFloat16:
      static_cast<uint16_t*>(base)[i] = float_to_half(static_cast<float>(v));
      return;
    case DataType::kBFloat16:
      static_cast<uint16_t*>(base)[i] = float_to_bfloat16(static_cast<float>(v));
      return;
    case DataType::kInt32:
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v);
      return;
    case DataType::kInt64:
      static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v);
      return;
    case DataType::kUInt8:
      static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v);
      return;
  }
}

double load_value(const void* base, size_t i, DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return static_cast<const float*>(base)[i];
    case DataType::kFloat64:
      return static_cast<const double*>(base)[i];
    case DataType::kFloat16:
      return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case DataType::kBFloat16:
      return bfloat16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DataType::kInt32:
      return static_cast<const int32_t*>(base)[i];
    case DataType::kInt64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DataType::kUInt8:
      return static_cast<const uint8_t*>(base)[i];
  }
  return 0;
}

using Bytes = std::vector<uint8_t>;

// Elements first..first+count of rank `rank`'s input.
Bytes make_input(int rank, size_t count, DataType type, size_t first = 0) {
  Bytes out(count * col::element_size(type));
  for (size_t i = 0; i < count; ++i) store_value(out.data(), i, type, input_value(rank, first + i, type));
  return out;
}

template <typename T>
T serial_reduce(ReduceOp op, int world, size_t index, DataType type) {
  T acc = static_cast<T>(input_value(0, index, type));
  for (int r = 1; r < world; ++r) {
    T v = static_cast<T>(input_value(r, index, type));
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg:
        acc += v;
        break;
      case ReduceOp::kProduct:
        acc *= v;
        break;
      case ReduceOp::kMin:
        acc = std::min(acc, v);
        break;
      case ReduceOp::kMax:
        acc = std::max(acc, v);
        break;
    }
  }
  return acc;
}

// Stores at out[i] what reducing input element `index` of ranks 0..world-1 must give: the
// serial reduction, in the type's arithmetic (float32 for the half types), done here.
// Floating types fold in double, exact for these inputs, and keeping the sign of a zero
// product (0 * -3 is -0).
void store_expected(void* out, size_t i, DataType type, ReduceOp op, int world, size_t index) {
  const bool avg = op == ReduceOp::kAvg;
  switch (type) {
    case DataType::kFloat32:
    case DataType::kFloat16:
    case DataType::kBFloat16: {
      auto x = static_cast<float>(serial_reduce<double>(op, world, index, type));
      if (avg) x /= static_cast<float>(world);
      store_value(out, i, type, x);
      return;
    }
    case DataType::kFloat64: {
      double x = serial_reduce<double>(op, world, index, type);
      if (avg) x /= world;
      static_cast<double*>(out)[i] = x;
      return;
    }
    default:
      break;
  }
  int64_t acc = serial_reduce<int64_t>(op, world, index, type);
  switch (type) {
    case DataType::kInt32: {
      int32_t x = static_cast<int32_t>(acc);
      if (avg) x /= world;
      static_cast<int32_t*>(out)[i] = x;
      return;
    }
    case DataType::kInt64: {
      int64_t x = acc;
      if (avg) x /= world;
      static_cast<int64_t*>(out)[i] = x;
      return;
    }
    case DataType::kUInt8: {
      auto x = static_cast<uint8_t>(acc & 0xff);  // uint8 arithmetic wraps
      if (avg) x = static_cast<uint8_t>(x / world);
      static_cast<uint8_t*>(out)[i] = x;
      return;
    }
    default:
      return;
  }
}

std::string describe(const char* op_name, DataType type, std::optional<ReduceOp> op, size_t count, int rank,
                     int world) {
  std::ostringstream s;
  s << op_name << " " << col::to_string(type);
  if (op) s << " " << col::to_string(*op);
  s << " count " << count << " rank " << rank << " of " << world;
  return s.str();
}

// Element-by-element comparison; reports the first difference only.
void expect_elements(const Bytes& actual, const Bytes& expected, DataType type, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  const size_t size = col::element_size(type);
  for (size_t i = 0; i < actual.size() / size; ++i) {
    if (std::memcmp(actual.data() + i * size, expected.data() + i * size, size) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << load_value(actual.data(), i, type) << ", expected "
                    << load_value(expected.data(), i, type);
      return;
    }
  }
}

BackendContext context_for(const std::string& group, int rank, int world, std::shared_ptr<Store> store,
                           std::chrono::milliseconds op_timeout) {
  BackendContext context;
  context.group = group;
  context.rank = rank;
  context.world_size = world;
  context.store = std::move(store);
  context.op_timeout = op_timeout;
  context.node_ids.assign(world, "0a");
  context.node_ips.assign(world, "127.0.0.1");
  return context;
}

using Group = std::vector<std::unique_ptr<Backend>>;

// The `world` backends of one group, each built on its own thread (building blocks until
// every rank has joined).
Group make_group(const std::string& name, int world, std::chrono::milliseconds op_timeout = 30s) {
  auto store = std::make_shared<FakeStore>();
  Group group(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        group[r] = make_tcp_backend(context_for(name, r, world, store, op_timeout));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << " failed to join: " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return group;
}

// Runs body(rank, backend) on one thread per rank; an exception fails the test.
void on_every_rank(Group& group, const std::function<void(int, Backend&)>& body) {
  for (auto& backend : group) ASSERT_NE(backend, nullptr) << "the group did not form";
  std::vector<std::thread> threads;
  for (int r = 0; r < static_cast<int>(group.size()); ++r) {
    threads.emplace_back([&, r] {
      try {
        body(r, *group[r]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << " threw: " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
}

long elapsed_ms(Clock::time_point since) {
  return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count());
}

// ---------------------------------------------------------------------------------------
// A peer process that dies. These tests fork, so they come first: no thread exists yet.

// A Store over a directory: one file per key, written whole by rename; get polls. Enough
// for processes of one machine in a test.
class FileStore final : public Store {
 public:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {}

  void set(const std::string& key, const std::string& value) override {
    std::string tmp = path(key) + ".tmp." + std::to_string(getpid());
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(value.data(), static_cast<std::streamsize>(value.size()));
    }
    std::filesystem::rename(tmp, path(key));
  }
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      std::ifstream in(path(key), std::ios::binary);
      if (in) return std::string(std::istreambuf_iterator<char>(in), {});
      if (Clock::now() >= deadline) throw CollectiveError("file store: key '" + key + "' not set in time");
      std::this_thread::sleep_for(2ms);
    }
  }
  int64_t add(const std::string& key, int64_t delta) override {
    int fd = ::open((path(key) + ".lock").c_str(), O_CREAT | O_RDWR, 0600);
    if (fd < 0) throw CollectiveError("file store: cannot lock '" + key + "'");
    ::flock(fd, LOCK_EX);
    int64_t value = 0;
    {
      std::ifstream in(path(key));
      in >> value;
    }
    value += delta;
    set(key, std::to_string(value));
    ::flock(fd, LOCK_UN);
    ::close(fd);
    return value;
  }

 private:
  std::string path(const std::string& key) const {
    std::string name = key;
    for (char& c : name)
      if (c == '/') c = '%';
    return dir_ + "/" + name;
  }
  std::string dir_;
};

// Waits up to `limit` for child `pid` to end; returns its wait status, or nothing (after
// killing it) when it is still running.
std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds limit) {
  auto deadline = Clock::now() + limit;
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(1ms);
  }
}

// Child processes: exit codes.
constexpr int kGotCollectiveError = 0;
constexpr int kNeverFailed = 2;
constexpr int kOtherFailure = 3;

// Rank 1: three good allreduces, then SIGKILLs itself from a second thread while its main
// thread is inside the next allreduces.
[[noreturn]] void run_victim(const std::string& dir, size_t count) {
  try {
    auto backend = make_tcp_backend(context_for("death", 1, 2, std::make_shared<FileStore>(dir), 120s));
    std::vector<float> data(count);
    for (int round = 0; round < 3; ++round) {
      std::fill(data.begin(), data.end(), 1.0f);
      backend->allreduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum);
    }
    std::thread([] {
      std::this_thread::sleep_for(3ms);
      ::raise(SIGKILL);
    }).detach();
    for (;;) backend->allreduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum);
  } catch (...) {
  }
  ::_exit(kOtherFailure);
}

// Rank 0: allreduces until one fails; reports the error and how long that op took.
[[noreturn]] void run_survivor(const std::string& dir, size_t count) {
  int code = kNeverFailed;
  std::string report;
  try {
    auto backend = make_tcp_backend(context_for("death", 0, 2, std::make_shared<FileStore>(dir), 120s));
    std::vector<float> data(count);
    for (int round = 0; round < 100000; ++round) {
      std::fill(data.begin(), data.end(), 1.0f);
      auto start = Clock::now();
      try {
        backend->allreduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum);
      } catch (const CollectiveError& e) {
        code = kGotCollectiveError;
        report = std::to_string(elapsed_ms(start)) + "\n" + e.what();
        break;
      }
      if (round < 3 && data[count - 1] != 2.0f) {
        code = kOtherFailure;
        report = "wrong sum before the kill";
        break;
      }
    }
  } catch (const std::exception& e) {
    code = kOtherFailure;
    report = std::string("unexpected: ") + e.what();
  }
  std::ofstream(dir + "/result") << report;
  ::_exit(code);
}

// Forks a survivor (rank 0) and a victim (rank 1) that allreduce `count` floats until the
// victim kills itself; the survivor must fail with a CollectiveError within 5 s.
void expect_survivor_fails_promptly(size_t count) {
  char dir_template[] = "/tmp/tcp_backend_test.XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  struct RemoveDir {
    std::string dir;
    ~RemoveDir() { std::filesystem::remove_all(dir); }
  } remove_dir{dir};

  pid_t survivor = ::fork();
  ASSERT_GE(survivor, 0);
  if (survivor == 0) run_survivor(dir, count);
  pid_t victim = ::fork();
  if (victim == 0) run_victim(dir, count);
  ASSERT_GE(victim, 0);

  std::optional<int> victim_status = wait_child(victim, 60s);
  auto killed_at = Clock::now();
  ASSERT_TRUE(victim_status.has_value()) << "the victim never died";
  EXPECT_TRUE(WIFSIGNALED(*victim_status) && WTERMSIG(*victim_status) == SIGKILL)
      << "the victim ended without its SIGKILL, status " << *victim_status;

  // Liveness, not speed: the survivor must not sit until the 120 s op timeout.
  std::optional<int> survivor_status = wait_child(survivor, 5s);
  const long detect_ms = elapsed_ms(killed_at);
  ASSERT_TRUE(survivor_status.has_value()) << "the survivor did not fail within 5 s of the peer's death";
  std::ifstream in(dir + "/result");
  std::string op_ms, message;
  std::getline(in, op_ms);
  std::getline(in, message, '\0');
  ASSERT_TRUE(WIFEXITED(*survivor_status)) << "survivor status " << *survivor_status;
  ASSERT_EQ(WEXITSTATUS(*survivor_status), kGotCollectiveError) << op_ms << " " << message;
  EXPECT_CONTAINS(message, "group 'death'");
  EXPECT_CONTAINS(message, "rank 0");
  EXPECT_CONTAINS(message, "allreduce");
  EXPECT_CONTAINS(message, "rank 1");  // the peer that died
  std::cout << "[ info ] survivor failed " << detect_ms << " ms after the peer's death; its last op took " << op_ms
            << " ms: " << message << "\n";
}

// Plain TESTs run in the order written, before every parameterized suite (gtest registers
// those later), so these forks happen while the process has no other thread.
TEST(TcpPeerDeath, SurvivorFailsPromptlySmallMessages) {
  expect_survivor_fails_promptly(1000);  // a few KiB: each frame whole in one write
}

TEST(TcpPeerDeath, SurvivorFailsPromptlyLargeMessages) {
  expect_survivor_fails_promptly(size_t{4} << 20);  // 16 MiB: frames cut mid-transfer
}

// ---------------------------------------------------------------------------------------
// Intruders: processes that reach a rank's listening socket without the group secret.

// A blocking TCP connection to "ip:port" (IPv4), with 10 s send and receive timeouts;
// -1 when it cannot connect.
int connect_to(const std::string& address) {
  size_t colon = address.rfind(':');
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (::inet_pton(AF_INET, address.substr(0, colon).c_str(), &to.sin_addr) != 1) return -1;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval limit{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool write_all(int fd, const void* data, size_t bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

bool read_exactly(int fd, void* data, size_t bytes) {
  auto* p = static_cast<uint8_t*>(data);
  while (bytes > 0) {
    ssize_t n = ::recv(fd, p, bytes, 0);
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

// Whether the other end closes `fd` (EOF or reset) within `limit`; reads and drops
// whatever arrives before.
bool closed_within(int fd, std::chrono::milliseconds limit) {
  auto deadline = Clock::now() + limit;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    uint8_t buffer[256];
    ssize_t n = ::recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return true;
  }
}

size_t count_of(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// Builds the `world` ranks of one group on threads started one by one.
class GroupBuilder {
 public:
  GroupBuilder(std::string name, int world, std::shared_ptr<Store> store, std::chrono::milliseconds op_timeout)
      : name_(std::move(name)), world_(world), store_(std::move(store)), op_timeout_(op_timeout), group_(world) {}
  ~GroupBuilder() { finish(); }

  void start(int rank) {
    threads_.emplace_back([this, rank] {
      try {
        group_[rank] = make_tcp_backend(context_for(name_, rank, world_, store_, op_timeout_));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << rank << " failed to join: " << e.what();
      }
    });
  }
  Group& finish() {
    for (auto& t : threads_) t.join();
    threads_.clear();
    return group_;
  }

 private:
  std::string name_;
  int world_;
  std::shared_ptr<Store> store_;
  std::chrono::milliseconds op_timeout_;
  Group group_;
  std::vector<std::thread> threads_;
};

void expect_allreduce_works(Group& group) {
  const int world = static_cast<int>(group.size());
  on_every_rank(group, [&](int rank, Backend& backend) {
    Bytes data = make_input(rank, 1001, DataType::kInt32);
    backend.allreduce(data.data(), 1001, DataType::kInt32, ReduceOp::kSum);
    Bytes expected(data.size());
    for (size_t i = 0; i < 1001; ++i) store_expected(expected.data(), i, DataType::kInt32, ReduceOp::kSum, world, i);
    expect_elements(data, expected, DataType::kInt32, describe("allreduce", DataType::kInt32, {}, 1001, rank, world));
    backend.barrier();
  });
}

// While rank 0 waits for its peers, three strangers connect to it: one sends an HTTP
// request, one answers the challenge as "rank 1" without the secret, one says nothing.
// The first two are refused at once; the real ranks then join while the silent one still
// sits in its handshake, and it is refused when the group forms.
TEST(TcpIntruders, AreRefusedWhileTheGroupFormsAndChangeNothing) {
  const int world = 3;
  auto store = std::make_shared<FakeStore>();
  ::testing::internal::CaptureStderr();
  GroupBuilder builder("intruded", world, store, 20s);
  builder.start(0);
  const std::string address = store->get("tcp/addr/0", 10s);
  int garbage = connect_to(address);
  int wrong_mac = connect_to(address);
  int silent = connect_to(address);
  ASSERT_GE(garbage, 0);
  ASSERT_GE(wrong_mac, 0);
  ASSERT_GE(silent, 0);

  std::string request = "GET / HTTP/1.1\r\nHost: gantry\r\nX-Padding: " + std::string(100, 'x') + "\r\n\r\n";
  EXPECT_TRUE(write_all(garbage, request.data(), request.size()));
  uint8_t challenge[32];
  ASSERT_TRUE(read_exactly(wrong_mac, challenge, sizeof challenge)) << "rank 0 sent no challenge";
  uint8_t response[4 + 32 + 32] = {1, 0, 0, 0};  // "rank 1", a nonce and a MAC made up without the secret
  for (size_t i = 4; i < sizeof response; ++i) response[i] = static_cast<uint8_t>(i * 37 + challenge[i % 32]);
  EXPECT_TRUE(write_all(wrong_mac, response, sizeof response));
  EXPECT_TRUE(closed_within(garbage, 5s)) << "the HTTP request was not refused";
  EXPECT_TRUE(closed_within(wrong_mac, 5s)) << "the wrong MAC was not refused";

  auto join_start = Clock::now();
  builder.start(1);
  builder.start(2);
  Group& group = builder.finish();
  const long join_ms = elapsed_ms(join_start);
  EXPECT_TRUE(closed_within(silent, 2s)) << "the silent connection outlived the join";
  const std::string log = ::testing::internal::GetCapturedStderr();
  std::cout << log;
  // The silent stranger would hold a serial acceptor for its 5 s handshake limit.
  EXPECT_LT(join_ms, 4000) << "the real ranks waited behind the intruders";
  EXPECT_EQ(count_of(log, "refused a collective connection from"), 3u) << log;
  EXPECT_CONTAINS(log, "sent more bytes than a handshake");
  EXPECT_CONTAINS(log, "wrong MAC for rank 1");
  EXPECT_CONTAINS(log, "the group formed before it completed a handshake");
  EXPECT_CONTAINS(log, "tcp group 'intruded' rank 0 of 3");
  ::close(garbage);
  ::close(wrong_mac);
  ::close(silent);

  expect_allreduce_works(group);
  // The listener closed once the group formed: nobody can reach the rank any more.
  int late = connect_to(address);
  EXPECT_LT(late, 0) << "rank 0 still accepts connections after the join";
  if (late >= 0) ::close(late);
}

// A connection that sends nothing is refused after 5 s, and the group still forms after it.
TEST(TcpIntruders, SilentConnectionIsRefusedAfterFiveSeconds) {
  auto store = std::make_shared<FakeStore>();
  ::testing::internal::CaptureStderr();
  GroupBuilder builder("silence", 2, store, 20s);
  builder.start(0);
  int silent = connect_to(store->get("tcp/addr/0", 10s));
  ASSERT_GE(silent, 0);
  auto start = Clock::now();
  EXPECT_TRUE(closed_within(silent, 9s));
  const long refused_ms = elapsed_ms(start);
  EXPECT_GE(refused_ms, 4500);
  ::close(silent);
  builder.start(1);
  Group& group = builder.finish();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(count_of(log, "refused a collective connection from"), 1u) << log;
  EXPECT_CONTAINS(log, "sent no complete handshake within 5000 ms");
  expect_allreduce_works(group);
}

// A member that answers with another group's secret is refused too: the secret, not the
// protocol, is what admits a rank.
TEST(TcpIntruders, ARankWithAnotherSecretCannotJoin) {
  auto store = std::make_shared<FakeStore>();
  auto other = std::make_shared<FakeStore>();
  ::testing::internal::CaptureStderr();
  GroupBuilder builder("secret", 2, store, 20s);
  builder.start(0);
  // A rank 1 whose store holds another secret, pointed at this group's rank 0. It redials
  // after each refusal until its join bound.
  other->set("tcp/secret", std::string(64, '7'));
  other->set("tcp/addr/0", store->get("tcp/addr/0", 10s));
  std::string impostor_error;
  try {
    make_tcp_backend(context_for("other", 1, 2, other, 1000ms));
    ADD_FAILURE() << "a rank with another secret joined";
  } catch (const CollectiveError& e) {
    impostor_error = e.what();
  }
  builder.start(1);
  Group& group = builder.finish();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_CONTAINS(impostor_error, "group 'other' rank 1");
  EXPECT_CONTAINS(impostor_error, "closed the connection during the handshake");
  EXPECT_CONTAINS(log, "wrong MAC for rank 1");
  expect_allreduce_works(group);
}

// ---------------------------------------------------------------------------------------
// Every op, type and size at world sizes 1 to 4, against a serial reduction.

class TcpGroup : public ::testing::TestWithParam<int> {};

TEST_P(TcpGroup, AllreduceMatchesSerialReduction) {
  const int world = GetParam();
  Group group = make_group("allreduce", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (DataType type : kAllTypes) {
      for (ReduceOp op : kAllOps) {
        for (size_t count : kCounts) {
          Bytes data = make_input(rank, count, type);
          backend.allreduce(data.data(), count, type, op);
          Bytes expected(data.size());
          for (size_t i = 0; i < count; ++i) store_expected(expected.data(), i, type, op, world, i);
          expect_elements(data, expected, type, describe("allreduce", type, op, count, rank, world));
        }
      }
    }
  });
}

TEST_P(TcpGroup, ReduceGivesRootTheResultAndLeavesOthersAlone) {
  const int world = GetParam();
  Group group = make_group("reduce", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (DataType type : kAllTypes) {
      for (ReduceOp op : kAllOps) {
        for (size_t count : kCounts) {
          const int root = static_cast<int>((count + static_cast<size_t>(op)) % world);
          Bytes data = make_input(rank, count, type);
          backend.reduce(data.data(), count, type, op, root);
          Bytes expected = make_input(rank, count, type);
          if (rank == root)
            for (size_t i = 0; i < count; ++i) store_expected(expected.data(), i, type, op, world, i);
          expect_elements(data, expected, type,
                          describe("reduce", type, op, count, rank, world) + " root " + std::to_string(root));
        }
      }
    }
  });
}

TEST_P(TcpGroup, ReduceScatterGivesRankRItsReducedBlock) {
  const int world = GetParam();
  Group group = make_group("reduce_scatter", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (DataType type : kAllTypes) {
      for (ReduceOp op : kAllOps) {
        for (size_t count : kCounts) {
          Bytes send = make_input(rank, world * count, type);
          const Bytes original = send;
          Bytes recv(count * col::element_size(type), 0xab);
          backend.reduce_scatter(send.data(), recv.data(), count, type, op);
          Bytes expected(recv.size());
          for (size_t i = 0; i < count; ++i) store_expected(expected.data(), i, type, op, world, rank * count + i);
          const std::string what = describe("reduce_scatter", type, op, count, rank, world);
          expect_elements(recv, expected, type, what);
          EXPECT_EQ(send, original) << what << ": the input changed";
        }
      }
    }
  });
}

TEST_P(TcpGroup, BroadcastCopiesRootToEveryRank) {
  const int world = GetParam();
  Group group = make_group("broadcast", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (DataType type : kAllTypes) {
      for (size_t count : kCounts) {
        for (int root = 0; root < world; ++root) {
          Bytes data = make_input(rank, count, type);
          backend.broadcast(data.data(), count, type, root);
          expect_elements(data, make_input(root, count, type), type,
                          describe("broadcast", type, {}, count, rank, world) + " root " + std::to_string(root));
        }
      }
    }
  });
}

TEST_P(TcpGroup, AllgatherPutsBlocksInRankOrder) {
  const int world = GetParam();
  Group group = make_group("allgather", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (DataType type : kAllTypes) {
      for (size_t count : kCounts) {
        Bytes send = make_input(rank, count, type);
        Bytes recv(world * count * col::element_size(type), 0xab);
        backend.allgather(send.data(), recv.data(), count, type);
        Bytes expected;
        for (int r = 0; r < world; ++r) {
          Bytes block = make_input(r, count, type);
          expected.insert(expected.end(), block.begin(), block.end());
        }
        expect_elements(recv, expected, type, describe("allgather", type, {}, count, rank, world));
      }
    }
    // In place: the send block is this rank's block of recv.
    const size_t count = 1001;
    const size_t bytes = count * sizeof(float);
    Bytes recv(world * bytes, 0xab);
    Bytes mine = make_input(rank, count, DataType::kFloat32);
    std::memcpy(recv.data() + rank * bytes, mine.data(), bytes);
    backend.allgather(recv.data() + rank * bytes, recv.data(), count, DataType::kFloat32);
    for (int r = 0; r < world; ++r)
      expect_elements(Bytes(recv.begin() + r * bytes, recv.begin() + (r + 1) * bytes),
                      make_input(r, count, DataType::kFloat32), DataType::kFloat32,
                      "in-place allgather block " + std::to_string(r) + " on rank " + std::to_string(rank));
  });
}

TEST_P(TcpGroup, BarrierHoldsEveryRankUntilAllArrive) {
  const int world = GetParam();
  Group group = make_group("barrier", world);
  std::atomic<int> arrivals{0};
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (int round = 1; round <= 20; ++round) {
      if ((round + rank) % 3 == 0) std::this_thread::sleep_for(2ms);  // stragglers
      arrivals.fetch_add(1);
      backend.barrier();
      EXPECT_GE(arrivals.load(), world * round) << "rank " << rank << " left barrier " << round << " early";
    }
  });
}

TEST_P(TcpGroup, SendRecvMatchInOrderBetweenEveryPair) {
  const int world = GetParam();
  if (world == 1) GTEST_SKIP() << "no peer to send to";
  Group group = make_group("p2p", world);
  struct Message {
    DataType type;
    size_t count;
  };
  const Message messages[] = {
      {DataType::kFloat32, 1001}, {DataType::kInt64, 1}, {DataType::kUInt8, 0}, {DataType::kBFloat16, 37}};
  on_every_rank(group, [&](int rank, Backend& backend) {
    // Every ordered pair in turn, the same schedule on every rank; several messages each.
    for (int from = 0; from < world; ++from) {
      for (int to = 0; to < world; ++to) {
        if (from == to || (rank != from && rank != to)) continue;
        for (size_t m = 0; m < std::size(messages); ++m) {
          const auto [type, count] = messages[m];
          const size_t first = m * 1000 + static_cast<size_t>(to);  // distinct payload per message
          if (rank == from) {
            Bytes data = make_input(from, count, type, first);
            backend.send(data.data(), count, type, to);
          } else {
            Bytes data(count * col::element_size(type), 0xab);
            backend.recv(data.data(), count, type, from);
            expect_elements(
                data, make_input(from, count, type, first), type,
                "message " + std::to_string(m) + " from " + std::to_string(from) + " to " + std::to_string(to));
          }
        }
      }
    }
  });
}

// Neighbour exchange, the MPI way: even ranks send first, odd ranks receive first. The
// messages are far larger than the socket buffers, so a send completes only as its
// receiver drains it.
TEST_P(TcpGroup, LargeSendRecvExchangeEvenRanksFirst) {
  const int world = GetParam();
  if (world == 1) GTEST_SKIP() << "no peer to send to";
  Group group = make_group("exchange", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    const int next = (rank + 1) % world, prev = (rank + world - 1) % world;
    for (int round = 0; round < 2; ++round) {
      const size_t count = kLargeCount + round;
      Bytes out = make_input(rank, count, DataType::kFloat32, round);
      Bytes in(count * sizeof(float), 0xab);
      if (rank % 2 == 0) {
        backend.send(out.data(), count, DataType::kFloat32, next);
        backend.recv(in.data(), count, DataType::kFloat32, prev);
      } else {
        backend.recv(in.data(), count, DataType::kFloat32, prev);
        backend.send(out.data(), count, DataType::kFloat32, next);
      }
      expect_elements(
          in, make_input(prev, count, DataType::kFloat32, round), DataType::kFloat32,
          "round " + std::to_string(round) + " from rank " + std::to_string(prev) + " on rank " + std::to_string(rank));
    }
  });
}

// About 1M elements: many pipelined pieces per ring step.
TEST_P(TcpGroup, LargeBuffers) {
  const int world = GetParam();
  Group group = make_group("large", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    struct Case {
      DataType type;
      ReduceOp op;
    };
    const Case cases[] = {{DataType::kFloat32, ReduceOp::kSum},
                          {DataType::kFloat32, ReduceOp::kAvg},
                          {DataType::kBFloat16, ReduceOp::kSum},
                          {DataType::kUInt8, ReduceOp::kMax},
                          {DataType::kInt64, ReduceOp::kProduct}};
    for (const auto& [type, op] : cases) {
      const size_t count = kLargeCount + 3;  // divisible by none of 2, 3, 4
      Bytes data = make_input(rank, count, type);
      backend.allreduce(data.data(), count, type, op);
      Bytes expected(data.size());
      for (size_t i = 0; i < count; ++i) store_expected(expected.data(), i, type, op, world, i);
      expect_elements(data, expected, type, describe("allreduce", type, op, count, rank, world));
    }
    {
      const int root = world - 1;
      Bytes data = make_input(rank, kLargeCount, DataType::kFloat32);
      backend.reduce(data.data(), kLargeCount, DataType::kFloat32, ReduceOp::kSum, root);
      Bytes expected = make_input(rank, kLargeCount, DataType::kFloat32);
      if (rank == root)
        for (size_t i = 0; i < kLargeCount; ++i)
          store_expected(expected.data(), i, DataType::kFloat32, ReduceOp::kSum, world, i);
      expect_elements(data, expected, DataType::kFloat32,
                      describe("reduce", DataType::kFloat32, ReduceOp::kSum, kLargeCount, rank, world));
    }
    {
      const int root = world / 2;
      Bytes data = make_input(rank, kLargeCount, DataType::kFloat32);
      backend.broadcast(data.data(), kLargeCount, DataType::kFloat32, root);
      expect_elements(data, make_input(root, kLargeCount, DataType::kFloat32), DataType::kFloat32,
                      describe("broadcast", DataType::kFloat32, {}, kLargeCount, rank, world));
    }
    {
      const size_t count = kLargeCount / 4 + 1;
      Bytes send = make_input(rank, count, DataType::kFloat32);
      Bytes recv(world * count * sizeof(float));
      backend.allgather(send.data(), recv.data(), count, DataType::kFloat32);
      Bytes expected;
      for (int r = 0; r < world; ++r) {
        Bytes block = make_input(r, count, DataType::kFloat32);
        expected.insert(expected.end(), block.begin(), block.end());
      }
      expect_elements(recv, expected, DataType::kFloat32,
                      describe("allgather", DataType::kFloat32, {}, count, rank, world));
    }
    {
      const size_t count = kLargeCount / world + 1;
      Bytes send = make_input(rank, world * count, DataType::kFloat32);
      Bytes recv(count * sizeof(float));
      backend.reduce_scatter(send.data(), recv.data(), count, DataType::kFloat32, ReduceOp::kSum);
      Bytes expected(recv.size());
      for (size_t i = 0; i < count; ++i)
        store_expected(expected.data(), i, DataType::kFloat32, ReduceOp::kSum, world, rank * count + i);
      expect_elements(recv, expected, DataType::kFloat32,
                      describe("reduce_scatter", DataType::kFloat32, ReduceOp::kSum, count, rank, world));
    }
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, TcpGroup, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

// ---------------------------------------------------------------------------------------
// Failures: abort, timeouts, mismatched ops, a peer that leaves, bad arguments.

TEST(TcpBackend, AbortFailsLaterOpsAtOnceAndThePeerPromptly) {
  Group group = make_group("aborted", 2, 60s);
  on_every_rank(group, [&](int rank, Backend& backend) {
    float x = 1;
    backend.allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    EXPECT_EQ(x, 2.0f);
  });
  group[0]->abort("stopped by the test");
  group[0]->abort("a second abort changes nothing");
  for (int i = 0; i < 2; ++i) {
    float x = 1;
    auto start = Clock::now();
    try {
      group[0]->allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "allreduce after abort succeeded";
    } catch (const CollectiveError& e) {
      EXPECT_CONTAINS(e.what(), "stopped by the test");
      EXPECT_CONTAINS(e.what(), "group 'aborted'");
      EXPECT_CONTAINS(e.what(), "rank 0");
      EXPECT_CONTAINS(e.what(), "allreduce");
    }
    EXPECT_LT(elapsed_ms(start), 100);
  }
  // Rank 1 did nothing wrong; its next op fails because rank 0 shut its connections down,
  // long before the 60 s op timeout.
  auto start = Clock::now();
  float x = 1;
  try {
    group[1]->allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    ADD_FAILURE() << "the peer's allreduce succeeded";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "rank 1");
    EXPECT_CONTAINS(e.what(), "allreduce");
    EXPECT_CONTAINS(e.what(), "rank 0 closed its connection");
  }
  EXPECT_LT(elapsed_ms(start), 5000);
}

TEST(TcpBackend, AbortInterruptsAWaitingRecv) {
  Group group = make_group("abort-recv", 2, 60s);
  ASSERT_TRUE(group[0] && group[1]);
  std::thread aborter([&] {
    std::this_thread::sleep_for(200ms);
    group[0]->abort("interrupted by the test");
  });
  auto start = Clock::now();
  float x = 0;
  try {
    group[0]->recv(&x, 1, DataType::kFloat32, 1);  // rank 1 never sends
    ADD_FAILURE() << "recv returned";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "interrupted by the test");
    EXPECT_CONTAINS(e.what(), "recv");
  }
  aborter.join();
  EXPECT_LT(elapsed_ms(start), 3000);
}

TEST(TcpBackend, AbortInterruptsALargeAllreduceOnEveryRank) {
  const int world = 3;
  Group group = make_group("abort-large", world, 60s);
  std::atomic<int> rounds{0};
  std::thread aborter([&] {
    while (rounds.load() < 2) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(5ms);  // inside a later allreduce
    group[1]->abort("aborted mid-allreduce");
  });
  std::vector<long> failed_after(world, -1);
  on_every_rank(group, [&](int rank, Backend& backend) {
    std::vector<float> data(8u << 20, 1.0f);
    for (int round = 0; round < 1000; ++round) {
      auto start = Clock::now();
      try {
        backend.allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      } catch (const CollectiveError& e) {
        failed_after[rank] = elapsed_ms(start);
        if (rank == 1) {
          EXPECT_CONTAINS(e.what(), "aborted mid-allreduce");
        }
        return;
      }
      if (rank == 0) rounds.fetch_add(1);
    }
  });
  aborter.join();
  for (int rank = 0; rank < world; ++rank) {
    EXPECT_GE(failed_after[rank], 0) << "rank " << rank << " never failed";
    EXPECT_LT(failed_after[rank], 5000) << "rank " << rank;
  }
}

TEST(TcpBackend, OpTimeoutIsACollectiveError) {
  Group group = make_group("timeout", 2, 300ms);
  ASSERT_TRUE(group[0] && group[1]);
  auto start = Clock::now();
  float x = 0;
  try {
    group[0]->recv(&x, 1, DataType::kFloat32, 1);
    ADD_FAILURE() << "recv returned";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "group 'timeout' rank 0");
    EXPECT_CONTAINS(e.what(), "recv");
    EXPECT_CONTAINS(e.what(), "timed out after 300 ms waiting for rank 1");
  }
  EXPECT_GE(elapsed_ms(start), 250);
  EXPECT_LT(elapsed_ms(start), 5000);
}

TEST(TcpBackend, RanksCallingDifferentSizesGetACollectiveError) {
  Group group = make_group("sizes", 2, 30s);
  std::vector<std::string> errors(2);
  auto start = Clock::now();
  on_every_rank(group, [&](int rank, Backend& backend) {
    std::vector<float> data(100 + rank, 1.0f);  // rank 1 calls with one element more
    try {
      backend.allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "rank " << rank << ": mismatched allreduce succeeded";
    } catch (const CollectiveError& e) {
      errors[rank] = e.what();
    }
  });
  EXPECT_LT(elapsed_ms(start), 5000);
  const std::string both = errors[0] + "\n" + errors[1];
  EXPECT_CONTAINS(both, "the ranks called different ops or sizes");
  // The frame of a 2-rank allreduce carries both halves of the ring: 50 + 50 floats on rank
  // 0, 50 + 51 on rank 1. Whichever rank reads the other's header first reports it.
  const bool rank0_saw = both.find(
                             "rank 1 sent allreduce frame #0 of 404 bytes where this rank expected allreduce "
                             "frame #0 of 400 bytes") != std::string::npos;
  const bool rank1_saw = both.find(
                             "rank 0 sent allreduce frame #0 of 400 bytes where this rank expected allreduce "
                             "frame #0 of 404 bytes") != std::string::npos;
  EXPECT_TRUE(rank0_saw || rank1_saw) << both;
}

TEST(TcpBackend, RanksCallingDifferentOpsGetACollectiveError) {
  Group group = make_group("ops", 2, 30s);
  std::string error;
  on_every_rank(group, [&](int rank, Backend& backend) {
    std::vector<float> data(10, 1.0f);
    if (rank == 0) {
      // A broadcast from rank 0 only sends, so it may complete; the next op cannot.
      try {
        backend.broadcast(data.data(), data.size(), DataType::kFloat32, 0);
        backend.barrier();
        ADD_FAILURE() << "rank 0 went on after the mismatch";
      } catch (const CollectiveError&) {
      }
      return;
    }
    try {
      backend.allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "allreduce against a broadcast succeeded";
    } catch (const CollectiveError& e) {
      error = e.what();
    }
  });
  EXPECT_CONTAINS(error, "rank 0 sent broadcast frame #0 of 40 bytes where this rank expected allreduce frame #0");
}

TEST(TcpBackend, PeerThatLeftFailsOnlyTheOpsThatNeedIt) {
  Group group = make_group("leaver", 3, 60s);
  on_every_rank(group, [&](int rank, Backend& backend) {
    int32_t x = rank;
    backend.allreduce(&x, 1, DataType::kInt32, ReduceOp::kSum);
    EXPECT_EQ(x, 3);
  });
  group[2].reset();
  // Ranks 0 and 1 still talk to each other.
  std::thread sender([&] {
    int64_t v = 42;
    EXPECT_NO_THROW(group[0]->send(&v, 1, DataType::kInt64, 1));
  });
  int64_t got = 0;
  EXPECT_NO_THROW(group[1]->recv(&got, 1, DataType::kInt64, 0));
  sender.join();
  EXPECT_EQ(got, 42);
  // A collective needs rank 2: it fails at once, not at the 60 s timeout.
  std::vector<std::string> errors(2);
  group.resize(2);
  auto start = Clock::now();
  on_every_rank(group, [&](int rank, Backend& backend) {
    int32_t x = 1;
    try {
      backend.allreduce(&x, 1, DataType::kInt32, ReduceOp::kSum);
      ADD_FAILURE() << "rank " << rank << ": allreduce without rank 2 succeeded";
    } catch (const CollectiveError& e) {
      errors[rank] = e.what();
    }
  });
  EXPECT_LT(elapsed_ms(start), 5000);
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_CONTAINS(errors[rank], "group 'leaver' rank " + std::to_string(rank));
    EXPECT_CONTAINS(errors[rank], "allreduce");
  }
}

TEST(TcpBackend, BadRankArgumentsThrowWithoutBreakingTheGroup) {
  Group group = make_group("arguments", 2);
  on_every_rank(group, [&](int rank, Backend& backend) {
    float x = 1;
    EXPECT_THROW(backend.broadcast(&x, 1, DataType::kFloat32, 2), CollectiveError);
    EXPECT_THROW(backend.reduce(&x, 1, DataType::kFloat32, ReduceOp::kSum, -1), CollectiveError);
    EXPECT_THROW(backend.send(&x, 1, DataType::kFloat32, rank), CollectiveError);
    EXPECT_THROW(backend.recv(&x, 1, DataType::kFloat32, 5), CollectiveError);
    backend.allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    EXPECT_EQ(x, 2.0f);
  });
}

TEST(TcpBackend, JoinFailsWhenAPeerNeverComes) {
  auto store = std::make_shared<FakeStore>();
  auto start = Clock::now();
  try {
    make_tcp_backend(context_for("lonely", 0, 2, store, 300ms));
    ADD_FAILURE() << "joined without the peer";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "group 'lonely' rank 0");
    EXPECT_CONTAINS(e.what(), "join");
    EXPECT_CONTAINS(e.what(), "no connection from rank(s) 1");
  }
  EXPECT_LT(elapsed_ms(start), 5000);
}

TEST(TcpBackend, KindIsTcp) {
  Group group = make_group("kind", 1);
  ASSERT_TRUE(group[0]);
  EXPECT_EQ(group[0]->kind(), col::BackendKind::kTcp);
  EXPECT_STREQ(col::to_string(col::BackendKind::kTcp), "tcp");
}

}  // namespace
