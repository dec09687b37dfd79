// The shared-memory backend with its ranks as threads of this process (FakeStore
// rendezvous), and once as forked processes meeting through a file-based store.

#include "collective/shm_backend.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "backend_test_support.h"
#include "collective/fake_store.h"
#include "collective/reduce_kernels.h"

namespace {

namespace col = gantry::collective;
using namespace gantry::collective::testing;
using col::detail::ShmBackendOptions;
using std::chrono::milliseconds;

constexpr milliseconds kOpTimeout(30000);
constexpr DataType kTypes[] = {DataType::kFloat32, DataType::kFloat64, DataType::kFloat16, DataType::kBFloat16,
                               DataType::kInt32,   DataType::kInt64,   DataType::kUInt8};
constexpr ReduceOp kOps[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax, ReduceOp::kProduct};

// ---- Typed buffers and the serial reference ---------------------------------------------

// Input element i of `rank`: a small integer (quarters for floating types), so that sums
// and products of up to four ranks stay in range in every type, and half types hold them.
int input_integer(int rank, size_t i, int salt) { return static_cast<int>((rank * 7 + i * 13 + salt) % 11) - 5; }

// One element type's arithmetic, the way reduce_kernels.h defines it: Acc is the
// accumulator (float32 for the half types), combined in rank order, rounded once.
template <typename Storage, typename Acc>
struct TypeOps {
  static Acc to_acc(Storage s) { return static_cast<Acc>(s); }
  static Storage from_acc(Acc a) { return static_cast<Storage>(a); }
};
struct HalfOps {
  static float to_acc(uint16_t s) { return col::detail::half_to_float(s); }
  static uint16_t from_acc(float a) { return col::detail::float_to_half(a); }
};
struct BFloat16Ops {
  static float to_acc(uint16_t s) { return col::detail::bfloat16_to_float(s); }
  static uint16_t from_acc(float a) { return col::detail::float_to_bfloat16(a); }
};

// Calls fn(Storage{}, Acc{}, Ops{}) for `type`.
template <typename Fn>
void with_type(DataType type, Fn fn) {
  switch (type) {
    case DataType::kFloat32:
      return fn(float{}, float{}, TypeOps<float, float>{});
    case DataType::kFloat64:
      return fn(double{}, double{}, TypeOps<double, double>{});
    case DataType::kInt32:
      return fn(int32_t{}, int32_t{}, TypeOps<int32_t, int32_t>{});
    case DataType::kInt64:
      return fn(int64_t{}, int64_t{}, TypeOps<int64_t, int64_t>{});
    case DataType::kUInt8:
      return fn(uint8_t{}, uint8_t{}, TypeOps<uint8_t, uint8_t>{});
    case DataType::kFloat16:
      return fn(uint16_t{}, float{}, HalfOps{});
    case DataType::kBFloat16:
      return fn(uint16_t{}, float{}, BFloat16Ops{});
  }
}

// A typed buffer as bytes.
struct Buffer {
  DataType type = DataType::kFloat32;
  size_t count = 0;
  std::vector<std::byte> bytes;

  Buffer(DataType t, size_t n) : type(t), count(n), bytes(n * col::element_size(t)) {}
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  size_t element_size() const { return col::element_size(type); }
};

// `count` inputs of `rank` (elements `first`.. of its sequence).
Buffer make_input(DataType type, size_t count, int rank, int salt, size_t first = 0) {
  Buffer b(type, count);
  with_type(type, [&](auto storage, auto acc, auto ops) {
    using S = decltype(storage);
    using A = decltype(acc);
    auto* out = reinterpret_cast<S*>(b.data());
    for (size_t i = 0; i < count; ++i) {
      int v = input_integer(rank, first + i, salt);
      A a = std::is_floating_point_v<A> ? static_cast<A>(v * 0.25) : static_cast<A>(std::is_unsigned_v<A> ? v + 5 : v);
      out[i] = ops.from_acc(a);
    }
  });
  return b;
}

// The reduction over ranks 0..world-1 of make_input(type, count, r, salt, first).
Buffer reference(DataType type, size_t count, int world, int salt, ReduceOp op, size_t first = 0) {
  std::vector<Buffer> inputs;
  for (int r = 0; r < world; ++r) inputs.push_back(make_input(type, count, r, salt, first));
  Buffer b(type, count);
  with_type(type, [&](auto storage, auto acc, auto ops) {
    using S = decltype(storage);
    using A = decltype(acc);
    auto* out = reinterpret_cast<S*>(b.data());
    for (size_t i = 0; i < count; ++i) {
      A a = ops.to_acc(reinterpret_cast<const S*>(inputs[0].data())[i]);
      for (int r = 1; r < world; ++r)
        a = combine<A>(a, ops.to_acc(reinterpret_cast<const S*>(inputs[r].data())[i]), op);
      if (op == ReduceOp::kAvg) a = static_cast<A>(a / static_cast<A>(world));
      out[i] = ops.from_acc(a);
    }
  });
  return b;
}

double element_as_double(const Buffer& b, size_t i) {
  double value = 0;
  with_type(b.type, [&](auto storage, auto, auto ops) {
    using S = decltype(storage);
    value = static_cast<double>(ops.to_acc(reinterpret_cast<const S*>(b.data())[i]));
  });
  return value;
}

// "" when equal element by element (bit for bit), else the first difference.
std::string compare(const Buffer& got, const Buffer& want, size_t want_offset = 0, size_t count = SIZE_MAX) {
  const size_t es = got.element_size();
  count = std::min(count, got.count);
  for (size_t i = 0; i < count; ++i)
    if (std::memcmp(got.bytes.data() + i * es, want.bytes.data() + (want_offset + i) * es, es) != 0)
      return "element " + std::to_string(i) + " of " + std::to_string(count) + ": got " +
             std::to_string(element_as_double(got, i)) + ", want " +
             std::to_string(element_as_double(want, want_offset + i));
  return "";
}

// ---- Groups of threads -------------------------------------------------------------------

BackendContext context(const std::shared_ptr<Store>& store, int rank, int world, milliseconds timeout = kOpTimeout,
                       const std::string& group = "test-group") {
  BackendContext c;
  c.group = group;
  c.rank = rank;
  c.world_size = world;
  c.store = store;
  c.op_timeout = timeout;
  return c;
}

using Backends = Group;

// Joins `world` ranks, one thread each, through one FakeStore.
Backends join_group(int world, ShmBackendOptions options = {}, milliseconds timeout = kOpTimeout,
                    std::shared_ptr<FakeStore> store = std::make_shared<FakeStore>()) {
  return build_on_threads(
      world, [&](int r) { return col::detail::make_shm_backend(context(store, r, world, timeout), options); });
}

// Runs fn(rank) on one thread per rank. A rank that throws aborts its backend, so that its
// peers fail at once instead of at the op timeout. Returns each rank's error ("" if none).
template <typename Fn>
std::vector<std::string> run_ranks(Backends& backends, Fn fn) {
  const int world = static_cast<int>(backends.size());
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const std::exception& e) {
        errors[r] = e.what();
        backends[r]->abort(std::string("rank failed: ") + e.what());
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

void expect_no_errors(const std::vector<std::string>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// A forked rank: allreduces (checking each result) until its backend fails; the dying
// rank SIGKILLs itself from a helper thread a little after its 20th allreduce. The
// survivor writes the error and the time it caught it into `dir`.
int forked_rank(const std::string& dir, int rank, bool die) {
  try {
    auto store = std::make_shared<FileStore>(dir);
    auto backend = col::detail::make_shm_backend(context(store, rank, 2, milliseconds(20000), "forked-group"));
    std::vector<float> data(1 << 20);
    for (int iteration = 0; iteration < 200000; ++iteration) {
      std::fill(data.begin(), data.end(), static_cast<float>(rank + 1));
      if (die && iteration == 20)
        std::thread([] {
          std::this_thread::sleep_for(milliseconds(20));
          ::kill(::getpid(), SIGKILL);
        }).detach();
      backend->allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      if (std::any_of(data.begin(), data.end(), [](float v) { return v != 3.0f; })) return 3;
    }
    return 4;  // the peer never died
  } catch (const std::exception& e) {
    std::ofstream(dir + "/error-" + std::to_string(rank)) << e.what();
    std::ofstream(dir + "/caught-at-" + std::to_string(rank)) << monotonic_ns();
    return 0;
  }
}

// First in the file: it forks, which is safest before any test has started threads.
TEST(ShmBackendProcesses, SurvivorOfAKilledRankFailsNamingIt) {
  TempDir temp_dir("shm-backend-test");
  ASSERT_FALSE(temp_dir.path().empty()) << "mkdtemp failed";
  const std::string& dir = temp_dir.path();
  pid_t children[2];
  for (int rank = 0; rank < 2; ++rank) {
    children[rank] = ::fork();
    ASSERT_GE(children[rank], 0);
    if (children[rank] == 0) ::_exit(forked_rank(dir, rank, rank == 1));
  }
  // Reap each child as it ends; note when the killed one died.
  int status[2] = {0, 0};
  bool done[2] = {false, false};
  int64_t died_at = 0;
  auto give_up = Clock::now() + std::chrono::seconds(60);
  while (!(done[0] && done[1]) && Clock::now() < give_up) {
    for (int r = 0; r < 2; ++r)
      if (!done[r] && ::waitpid(children[r], &status[r], WNOHANG) == children[r]) {
        done[r] = true;
        if (r == 1) died_at = monotonic_ns();
      }
    std::this_thread::sleep_for(milliseconds(1));
  }
  for (int r = 0; r < 2; ++r)
    if (!done[r]) {
      ::kill(children[r], SIGKILL);
      ::waitpid(children[r], &status[r], 0);
    }
  ASSERT_TRUE(done[0] && done[1]) << "the ranks did not finish within 60 s";
  EXPECT_TRUE(WIFSIGNALED(status[1]) && WTERMSIG(status[1]) == SIGKILL) << "rank 1 status " << status[1];
  ASSERT_TRUE(WIFEXITED(status[0])) << "rank 0 status " << status[0];
  ASSERT_EQ(WEXITSTATUS(status[0]), 0) << "rank 0: 3 = wrong allreduce result, 4 = never noticed the death";
  std::string error = read_file(dir + "/error-0");
  EXPECT_CONTAINS(error, "rank 1 (pid " + std::to_string(children[1]) + ")");
  EXPECT_CONTAINS(error, "exited during allreduce");
  EXPECT_CONTAINS(error, "forked-group");
  double latency = (std::stoll(read_file(dir + "/caught-at-0")) - died_at) / 1e9;
  EXPECT_LE(latency, 5.0) << "the survivor took " << latency << " s to notice";
}

// ---- Every op, every type, every world size -------------------------------------------------

struct GroupShape {
  int world;
  size_t slot_bytes;  // 0: the default
};

void PrintTo(const GroupShape& shape, std::ostream* os) {
  *os << "world " << shape.world << ", slot bytes " << shape.slot_bytes;
}

std::string shape_name(const testing::TestParamInfo<GroupShape>& info) {
  return "world" + std::to_string(info.param.world) + (info.param.slot_bytes ? "_tinyslots" : "_defaultslots");
}

class ShmBackendOps : public testing::TestWithParam<GroupShape> {
 protected:
  int world() const { return GetParam().world; }
  // Sizes: empty, one, odd (and not divisible by 2, 3 or 4), and larger than a chunk.
  std::vector<size_t> sizes() const {
    return GetParam().slot_bytes ? std::vector<size_t>{0, 1, 1001, 4099} : std::vector<size_t>{0, 1, 1001, 200003};
  }
  Backends join() { return join_group(world(), ShmBackendOptions{.slot_bytes = GetParam().slot_bytes}); }
};

TEST_P(ShmBackendOps, AllreduceMatchesSerialReduction) {
  Backends backends = join();
  for (DataType type : kTypes)
    for (size_t count : sizes())
      for (ReduceOp op : kOps) {
        int salt = static_cast<int>(count % 7) + static_cast<int>(op);
        Buffer want = reference(type, count, world(), salt, op);
        expect_no_errors(run_ranks(backends, [&](int r) {
          Buffer data = make_input(type, count, r, salt);
          backends[r]->allreduce(data.data(), count, type, op);
          std::string diff = compare(data, want);
          EXPECT_EQ(diff, "") << "rank " << r << " " << to_string(type) << " " << to_string(op) << " count " << count;
        }));
      }
}

TEST_P(ShmBackendOps, ReduceLeavesOthersUnchanged) {
  Backends backends = join();
  for (DataType type : kTypes)
    for (size_t count : sizes())
      for (ReduceOp op : kOps) {
        int salt = static_cast<int>(op) + 3;
        int root = static_cast<int>((count + static_cast<size_t>(op)) % world());
        Buffer want = reference(type, count, world(), salt, op);
        expect_no_errors(run_ranks(backends, [&](int r) {
          Buffer data = make_input(type, count, r, salt);
          backends[r]->reduce(data.data(), count, type, op, root);
          std::string diff = compare(data, r == root ? want : make_input(type, count, r, salt));
          EXPECT_EQ(diff, "") << "rank " << r << " root " << root << " " << to_string(type) << " " << to_string(op)
                              << " count " << count;
        }));
      }
}

TEST_P(ShmBackendOps, ReduceScatterGivesEachRankItsBlock) {
  Backends backends = join();
  for (DataType type : kTypes)
    for (size_t count : sizes())
      for (ReduceOp op : kOps) {
        int salt = static_cast<int>(op) + 1;
        // `send` is world blocks of `count`: elements 0.. of each rank's sequence.
        Buffer want = reference(type, count * world(), world(), salt, op);
        expect_no_errors(run_ranks(backends, [&](int r) {
          Buffer send = make_input(type, count * world(), r, salt);
          Buffer recv(type, count);
          backends[r]->reduce_scatter(send.data(), recv.data(), count, type, op);
          std::string diff = compare(recv, want, r * count, count);
          EXPECT_EQ(diff, "") << "rank " << r << " " << to_string(type) << " " << to_string(op) << " count " << count;
        }));
      }
}

TEST_P(ShmBackendOps, BroadcastCopiesTheRoot) {
  Backends backends = join();
  for (DataType type : kTypes)
    for (size_t count : sizes()) {
      int root = static_cast<int>(count % world());
      Buffer want = make_input(type, count, root, 5);
      expect_no_errors(run_ranks(backends, [&](int r) {
        Buffer data = make_input(type, count, r, 5);
        backends[r]->broadcast(data.data(), count, type, root);
        EXPECT_EQ(compare(data, want), "")
            << "rank " << r << " root " << root << " " << to_string(type) << " count " << count;
      }));
    }
}

TEST_P(ShmBackendOps, AllgatherConcatenatesInRankOrder) {
  Backends backends = join();
  for (DataType type : kTypes)
    for (size_t count : sizes())
      for (bool in_place : {false, true}) {
        expect_no_errors(run_ranks(backends, [&](int r) {
          Buffer mine = make_input(type, count, r, 2);
          Buffer recv(type, count * world());
          const void* send = mine.data();
          if (in_place && count > 0) {  // `send` is this rank's block of `recv`
            std::memcpy(recv.bytes.data() + r * mine.bytes.size(), mine.data(), mine.bytes.size());
            send = recv.bytes.data() + r * mine.bytes.size();
          }
          backends[r]->allgather(send, recv.data(), count, type);
          for (int p = 0; p < world() && count > 0; ++p) {
            Buffer block(type, count);
            std::memcpy(block.data(), recv.bytes.data() + p * block.bytes.size(), block.bytes.size());
            EXPECT_EQ(compare(block, make_input(type, count, p, 2)), "")
                << "rank " << r << " block " << p << " " << to_string(type) << " count " << count;
          }
        }));
      }
}

TEST_P(ShmBackendOps, BarrierReleasesNobodyEarly) {
  Backends backends = join();
  constexpr int kRounds = 30;
  std::vector<std::atomic<int>> arrived(kRounds);
  expect_no_errors(run_ranks(backends, [&](int r) {
    std::mt19937 rng(r);
    for (int round = 0; round < kRounds; ++round) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
      arrived[round].fetch_add(1);
      backends[r]->barrier();
      EXPECT_EQ(arrived[round].load(), world()) << "rank " << r << " left barrier " << round << " early";
    }
  }));
}

TEST_P(ShmBackendOps, SendRecvBetweenEveryPairInOrder) {
  Backends backends = join();
  if (world() == 1) {
    float x = 0;
    EXPECT_THROW(backends[0]->send(&x, 1, DataType::kFloat32, 0), CollectiveError);
    EXPECT_THROW(backends[0]->recv(&x, 1, DataType::kFloat32, 1), CollectiveError);
    return;
  }
  // Three messages each way per pair, sizes from empty to several channel slots.
  const std::vector<size_t> counts = {0, 1001, 300007};
  const DataType types[] = {DataType::kFloat32, DataType::kUInt8, DataType::kBFloat16};
  expect_no_errors(run_ranks(backends, [&](int r) {
    for (int a = 0; a < world(); ++a)
      for (int b = a + 1; b < world(); ++b) {
        if (r != a && r != b) continue;
        int peer = r == a ? b : a;
        auto send_all = [&] {
          for (size_t m = 0; m < counts.size(); ++m) {
            Buffer out = make_input(types[m], counts[m], r, a * 10 + b);
            backends[r]->send(out.data(), counts[m], types[m], peer);
          }
        };
        auto recv_all = [&] {
          for (size_t m = 0; m < counts.size(); ++m) {
            Buffer in(types[m], counts[m]);
            backends[r]->recv(in.data(), counts[m], types[m], peer);
            EXPECT_EQ(compare(in, make_input(types[m], counts[m], peer, a * 10 + b)), "")
                << "message " << m << " from rank " << peer << " to rank " << r;
          }
        };
        if (r == a) {
          send_all();
          recv_all();
        } else {
          recv_all();
          send_all();
        }
      }
  }));
}

INSTANTIATE_TEST_SUITE_P(Shapes, ShmBackendOps,
                         testing::Values(GroupShape{1, 0}, GroupShape{2, 0}, GroupShape{3, 0}, GroupShape{4, 0},
                                         GroupShape{2, 4096}, GroupShape{3, 4096}, GroupShape{4, 4096}),
                         shape_name);

// ---- Large buffers ------------------------------------------------------------------------

TEST(ShmBackendLarge, FourMillionFloatSum) {
  for (int world : {2, 4}) {
    Backends backends = join_group(world);
    const size_t count = 4 << 20;
    Buffer want = reference(DataType::kFloat32, count, world, 1, ReduceOp::kSum);
    expect_no_errors(run_ranks(backends, [&](int r) {
      Buffer data = make_input(DataType::kFloat32, count, r, 1);
      backends[r]->allreduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum);
      EXPECT_EQ(compare(data, want), "") << "rank " << r << " of " << world;
    }));
  }
}

TEST(ShmBackendLarge, SixtyFourMiBAllgather) {
  const int world = 2;
  const size_t count = (64 << 20) / world;  // bytes per rank: recv is 64 MiB
  Backends backends = join_group(world);
  expect_no_errors(run_ranks(backends, [&](int r) {
    Buffer mine = make_input(DataType::kUInt8, count, r, 9);
    Buffer recv(DataType::kUInt8, count * world);
    backends[r]->allgather(mine.data(), recv.data(), count, DataType::kUInt8);
    for (int p = 0; p < world; ++p) {
      Buffer block(DataType::kUInt8, count);
      std::memcpy(block.data(), recv.bytes.data() + p * count, count);
      EXPECT_EQ(compare(block, make_input(DataType::kUInt8, count, p, 9)), "") << "rank " << r << " block " << p;
    }
  }));
}

// ---- Failures -------------------------------------------------------------------------------

TEST(ShmBackendFailures, AbortFailsTheOpInProgressAndThePeers) {
  Backends backends = join_group(3);
  std::atomic<bool> aborted{false};
  std::atomic<int64_t> aborted_at{0};
  std::vector<double> latency(3, -1);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r)
    threads.emplace_back([&, r] {
      if (r == 2)  // never joins this allreduce before the abort
        while (!aborted.load()) std::this_thread::sleep_for(milliseconds(1));
      std::vector<float> data(1001, 1.0f);
      try {
        backends[r]->allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      } catch (const CollectiveError& e) {
        errors[r] = e.what();
        latency[r] = (monotonic_ns() - aborted_at.load()) / 1e9;
      }
    });
  std::this_thread::sleep_for(milliseconds(200));  // ranks 0 and 1 wait for rank 2
  aborted_at.store(monotonic_ns());
  backends[0]->abort("operator pressed stop");
  aborted.store(true);
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    EXPECT_CONTAINS(errors[r], "operator pressed stop") << "rank " << r;
    EXPECT_CONTAINS(errors[r], "test-group");
    EXPECT_GE(latency[r], 0.0) << "rank " << r;
    EXPECT_LT(latency[r], 2.0) << "rank " << r;
  }
  // Later ops fail at once, on the aborted rank and on the others.
  auto t0 = Clock::now();
  EXPECT_THROW(backends[0]->barrier(), CollectiveError);
  EXPECT_THROW(backends[1]->broadcast(nullptr, 0, DataType::kFloat32, 0), CollectiveError);
  EXPECT_LT(seconds_since(t0), 0.5);
  backends[0]->abort("again");  // idempotent
}

TEST(ShmBackendFailures, AbortWorksInAWorldOfOne) {
  Backends backends = join_group(1);
  float x = 1;
  backends[0]->allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
  backends[0]->abort("done here");
  try {
    backends[0]->allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    FAIL() << "allreduce after abort succeeded";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "done here");
  }
}

TEST(ShmBackendFailures, OpTimeoutNamesTheOpAndTheMissingRank) {
  Backends backends = join_group(2, {}, milliseconds(300));
  std::vector<float> data(100, 1.0f);
  auto t0 = Clock::now();
  try {
    backends[0]->allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);  // rank 1 never comes
    FAIL() << "allreduce without rank 1 succeeded";
  } catch (const CollectiveError& e) {
    std::string what = e.what();
    EXPECT_CONTAINS(what, "allreduce");
    EXPECT_CONTAINS(what, "timed out after 300 ms");
    EXPECT_CONTAINS(what, "rank 1");
  }
  double elapsed = seconds_since(t0);
  EXPECT_GE(elapsed, 0.3);
  EXPECT_LT(elapsed, 2.0);
  // The group is broken for rank 1 too: its next op fails at once instead of hanging.
  t0 = Clock::now();
  EXPECT_THROW(backends[1]->allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum), CollectiveError);
  EXPECT_LT(seconds_since(t0), 0.5);
}

TEST(ShmBackendFailures, PeerThatLeftFailsItsReceiver) {
  Backends backends = join_group(2);
  std::thread leaver([&] {
    std::this_thread::sleep_for(milliseconds(100));
    backends[1].reset();
  });
  float x = 0;
  auto t0 = Clock::now();
  try {
    backends[0]->recv(&x, 1, DataType::kFloat32, 1);
    FAIL() << "recv from a destroyed peer succeeded";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "rank 1");
    EXPECT_CONTAINS(e.what(), "left the group");
  }
  EXPECT_LT(seconds_since(t0), 2.0);
  leaver.join();
}

TEST(ShmBackendFailures, MismatchedMessageSizeFailsTheReceiver) {
  Backends backends = join_group(2);
  auto errors = run_ranks(backends, [&](int r) {
    std::vector<float> data(20, 1.0f);
    if (r == 0) backends[0]->send(data.data(), 10, DataType::kFloat32, 1);
    if (r == 1) backends[1]->recv(data.data(), 20, DataType::kFloat32, 0);
  });
  EXPECT_EQ(errors[0], "");
  EXPECT_CONTAINS(errors[1], "expected 80 bytes from rank 0");
}

TEST(ShmBackendFailures, BadRootOrPeerIsRejected) {
  Backends backends = join_group(2);
  float x = 0;
  EXPECT_THROW(backends[0]->broadcast(&x, 1, DataType::kFloat32, 2), CollectiveError);
  EXPECT_THROW(backends[0]->reduce(&x, 1, DataType::kFloat32, ReduceOp::kSum, -1), CollectiveError);
  EXPECT_THROW(backends[0]->send(&x, 1, DataType::kFloat32, 0), CollectiveError);
  EXPECT_THROW(backends[0]->recv(&x, 1, DataType::kFloat32, 5), CollectiveError);
  // Nothing happened: the group still works.
  expect_no_errors(run_ranks(backends, [&](int r) { backends[r]->barrier(); }));
}

// ---- Rendezvous ---------------------------------------------------------------------------

std::string join_error(const std::shared_ptr<Store>& store, int rank, int world,
                       milliseconds timeout = milliseconds(300)) {
  try {
    col::detail::make_shm_backend(context(store, rank, world, timeout));
  } catch (const CollectiveError& e) {
    return e.what();
  }
  return "";
}

TEST(ShmBackendJoin, SegmentIsUnlinkedOnceEveryoneMappedIt) {
  auto store = std::make_shared<FakeStore>();
  Backends backends = join_group(3, {}, kOpTimeout, store);
  std::string name = store->get(col::detail::kShmSegmentKey, milliseconds(10));
  EXPECT_EQ(name.rfind("/gantry-col-", 0), 0u) << name;
  int fd = ::shm_open(name.c_str(), O_RDONLY, 0);
  EXPECT_LT(fd, 0) << name << " still exists";
  if (fd >= 0) ::close(fd);
}

TEST(ShmBackendJoin, MissingRankTimesOut) {
  auto t0 = Clock::now();
  std::string error = join_error(std::make_shared<FakeStore>(), 0, 2);
  EXPECT_CONTAINS(error, "join timed out after 300 ms");
  EXPECT_CONTAINS(error, "missing ranks: 1");
  EXPECT_LT(seconds_since(t0), 2.0);
  error = join_error(std::make_shared<FakeStore>(), 1, 2);  // rank 0 never publishes
  EXPECT_CONTAINS(error, "rank 1 of group 'test-group'");
  EXPECT_CONTAINS(error, "published no shared memory segment");
}

TEST(ShmBackendJoin, GarbageSegmentNamesAreRejected) {
  auto store = std::make_shared<FakeStore>();
  store->set(col::detail::kShmSegmentKey, "../../etc/passwd");
  EXPECT_CONTAINS(join_error(store, 1, 2), "not a gantry segment name");
  store->set(col::detail::kShmSegmentKey, "/gantry-col-00000000deadbeef");
  EXPECT_CONTAINS(join_error(store, 1, 2), "cannot open shared memory segment");
}

TEST(ShmBackendJoin, ForeignSegmentsAreRejected) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%08x%08x", 0xfeedfaceu, static_cast<unsigned>(::getpid()));
  const std::string name = std::string("/gantry-col-") + hex;
  auto make_segment = [&](size_t bytes, char fill) {
    ::shm_unlink(name.c_str());
    int fd = ::shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
    ASSERT_GE(fd, 0);
    std::vector<char> content(bytes, fill);
    ASSERT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(bytes));
    ::close(fd);
  };
  auto store = std::make_shared<FakeStore>();
  store->set(col::detail::kShmSegmentKey, name);
  make_segment(16, 0);
  EXPECT_CONTAINS(join_error(store, 1, 2), "too small");
  make_segment(1 << 16, 0x5a);
  EXPECT_CONTAINS(join_error(store, 1, 2), "not a version 1 gantry collective segment");
  ::shm_unlink(name.c_str());
}

TEST(ShmBackendJoin, WorldSizeMismatchFailsBothSides) {
  auto store = std::make_shared<FakeStore>();
  std::string rank0_error;
  auto t0 = Clock::now();
  std::thread rank0([&] { rank0_error = join_error(store, 0, 2, milliseconds(10000)); });
  std::string rank1_error = join_error(store, 1, 3, milliseconds(10000));
  rank0.join();
  EXPECT_CONTAINS(rank1_error, "world size 3 but rank 0 created the group with 2");
  EXPECT_CONTAINS(rank0_error, "another world size");
  EXPECT_LT(seconds_since(t0), 2.0);
}

TEST(ShmBackendJoin, SameRankTwiceIsRejected) {
  auto store = std::make_shared<FakeStore>();
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i)  // ranks 0, 1, 1 of a world of 3
    threads.emplace_back([&, i] { errors[i] = join_error(store, i == 0 ? 0 : 1, 3, milliseconds(500)); });
  for (auto& t : threads) t.join();
  int twice = 0;
  for (const auto& e : errors) twice += e.find("joined twice") != std::string::npos;
  EXPECT_EQ(twice, 1) << errors[0] << " | " << errors[1] << " | " << errors[2];
}

TEST(ShmBackendJoin, InvalidContextsAreRejected) {
  auto store = std::make_shared<FakeStore>();
  EXPECT_CONTAINS(join_error(store, 2, 2), "rank 2 is not in 0..1");
  EXPECT_CONTAINS(join_error(store, 0, 0), "world size 0");
  EXPECT_CONTAINS(join_error(nullptr, 0, 2), "no store");
}

}  // namespace
