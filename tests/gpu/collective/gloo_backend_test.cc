// Tests of the Gloo backend. Ranks are threads of this process sharing one FakeStore and
// talking TCP over 127.0.0.1, except the peer-death tests, which fork real processes that
// meet through a directory of files (and run first, before any thread exists).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
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
// Large enough for the ring allreduce (>= 256 KiB) and for several gloo segments.
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
        group[r] = make_gloo_backend(context_for(name, r, world, store, op_timeout));
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
    auto backend = make_gloo_backend(context_for("death", 1, 2, std::make_shared<FileStore>(dir), 120s));
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
    auto backend = make_gloo_backend(context_for("death", 0, 2, std::make_shared<FileStore>(dir), 120s));
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
  char dir_template[] = "/tmp/gloo_backend_test.XXXXXX";
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
  std::cout << "[ info ] survivor failed " << detect_ms << " ms after the peer's death; its last op took " << op_ms
            << " ms: " << message << "\n";
}

// Plain TESTs run in the order written, before every parameterized suite (gtest registers
// those later), so these forks happen while the process has no other thread.
TEST(GlooPeerDeath, SurvivorFailsPromptlySmallMessages) {
  expect_survivor_fails_promptly(1000);  // a few KiB: each message whole in one write
}

TEST(GlooPeerDeath, SurvivorFailsPromptlyLargeMessages) {
  expect_survivor_fails_promptly(size_t{4} << 20);  // 16 MiB: ring segments cut mid-transfer
}

// ---------------------------------------------------------------------------------------
// Every op, type and size at world sizes 1 to 4, against a serial reduction.

class GlooGroup : public ::testing::TestWithParam<int> {};

TEST_P(GlooGroup, AllreduceMatchesSerialReduction) {
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

TEST_P(GlooGroup, ReduceGivesRootTheResultAndLeavesOthersAlone) {
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

TEST_P(GlooGroup, ReduceScatterGivesRankRItsReducedBlock) {
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

TEST_P(GlooGroup, BroadcastCopiesRootToEveryRank) {
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

TEST_P(GlooGroup, AllgatherPutsBlocksInRankOrder) {
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

TEST_P(GlooGroup, BarrierHoldsEveryRankUntilAllArrive) {
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

TEST_P(GlooGroup, SendRecvMatchInOrderBetweenEveryPair) {
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

// 1M elements: gloo's ring allreduce and reduce with several segments per rank.
TEST_P(GlooGroup, LargeBuffersTakeTheRing) {
  const int world = GetParam();
  Group group = make_group("large", world);
  on_every_rank(group, [&](int rank, Backend& backend) {
    struct Case {
      DataType type;
      ReduceOp op;
    };
    const Case cases[] = {{DataType::kFloat32, ReduceOp::kSum},     {DataType::kFloat32, ReduceOp::kAvg},
                          {DataType::kFloat32, ReduceOp::kMin},     {DataType::kFloat32, ReduceOp::kMax},
                          {DataType::kFloat32, ReduceOp::kProduct}, {DataType::kBFloat16, ReduceOp::kSum},
                          {DataType::kUInt8, ReduceOp::kMax},       {DataType::kInt64, ReduceOp::kSum}};
    for (const auto& [type, op] : cases) {
      Bytes data = make_input(rank, kLargeCount, type);
      backend.allreduce(data.data(), kLargeCount, type, op);
      Bytes expected(data.size());
      for (size_t i = 0; i < kLargeCount; ++i) store_expected(expected.data(), i, type, op, world, i);
      expect_elements(data, expected, type, describe("allreduce", type, op, kLargeCount, rank, world));
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

INSTANTIATE_TEST_SUITE_P(WorldSizes, GlooGroup, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "world" + std::to_string(info.param); });

// ---------------------------------------------------------------------------------------
// Failures: abort, timeouts, a peer that leaves, bad arguments.

TEST(GlooBackend, AbortFailsLaterOpsAtOnceAndThePeerPromptly) {
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
  // Rank 1 did nothing wrong; its next op fails because rank 0 closed its connections,
  // long before the 60 s op timeout.
  auto start = Clock::now();
  float x = 1;
  try {
    group[1]->allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    ADD_FAILURE() << "the peer's allreduce succeeded";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "rank 1");
    EXPECT_CONTAINS(e.what(), "allreduce");
  }
  EXPECT_LT(elapsed_ms(start), 5000);
}

TEST(GlooBackend, AbortInterruptsAWaitingRecv) {
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

TEST(GlooBackend, AbortInterruptsALargeAllreduceOnEveryRank) {
  Group group = make_group("abort-large", 2, 60s);
  std::atomic<int> rounds{0};
  std::thread aborter([&] {
    while (rounds.load() < 2) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(5ms);  // inside a later allreduce
    group[1]->abort("aborted mid-allreduce");
  });
  std::vector<long> failed_after(2, -1);
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
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_GE(failed_after[rank], 0) << "rank " << rank << " never failed";
    EXPECT_LT(failed_after[rank], 5000) << "rank " << rank;
  }
}

TEST(GlooBackend, OpTimeoutIsACollectiveError) {
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
    EXPECT_CONTAINS(e.what(), "Timed out");
  }
  EXPECT_GE(elapsed_ms(start), 250);
  EXPECT_LT(elapsed_ms(start), 5000);
}

TEST(GlooBackend, PeerThatLeftFailsOnlyTheOpsThatNeedIt) {
  Group group = make_group("leaver", 3, 60s);
  on_every_rank(group, [&](int rank, Backend& backend) {
    int32_t x = rank;
    backend.allreduce(&x, 1, DataType::kInt32, ReduceOp::kSum);
    EXPECT_EQ(x, 3);
  });
  group[2].reset();
  std::this_thread::sleep_for(300ms);  // the others' watchdogs see the close
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

TEST(GlooBackend, BadRankArgumentsThrowWithoutBreakingTheGroup) {
  Group group = make_group("arguments", 2);
  on_every_rank(group, [&](int rank, Backend& backend) {
    float x = 1;
    EXPECT_THROW(backend.broadcast(&x, 1, DataType::kFloat32, 2), CollectiveError);
    EXPECT_THROW(backend.reduce(&x, 1, DataType::kFloat32, ReduceOp::kSum, -1), CollectiveError);
    EXPECT_THROW(backend.send(&x, 1, DataType::kFloat32, rank), CollectiveError);
    backend.allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    EXPECT_EQ(x, 2.0f);
  });
}

TEST(GlooBackend, JoinFailsWhenAPeerNeverComes) {
  auto store = std::make_shared<FakeStore>();
  auto start = Clock::now();
  try {
    make_gloo_backend(context_for("lonely", 0, 2, store, 300ms));
    ADD_FAILURE() << "joined without the peer";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "group 'lonely' rank 0");
    EXPECT_CONTAINS(e.what(), "join");
  }
  EXPECT_LT(elapsed_ms(start), 5000);
}

TEST(GlooBackend, KindIsGloo) {
  Group group = make_group("kind", 1);
  ASSERT_TRUE(group[0]);
  EXPECT_EQ(group[0]->kind(), col::BackendKind::kGloo);
}

}  // namespace
