// gantry::collective on the embedded cluster: ranks are real worker processes (tasks,
// actors) and the driver, meeting through the head's key-value store.

#include <gantry/collective.h>
#include <gantry/gantry.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <sstream>
#include <thread>

#include "collective/reduce_kernels.h"

using namespace std::chrono_literals;
namespace col = gantry::collective;

namespace {

// Rank r's input element i: small integers, so float sums and products are exact.
double input_value(int rank, size_t i) { return static_cast<double>((rank * 7 + i * 13) % 11 + 1); }

template <typename T>
struct Elem {
  static T from(double v) { return static_cast<T>(v); }
  static double to(T v) { return static_cast<double>(v); }
};

// Half types travel as their 16 bits.
struct Half {
  uint16_t bits;
};
struct BHalf {
  uint16_t bits;
};
template <>
struct Elem<Half> {
  static Half from(double v) { return {col::detail::float_to_half(static_cast<float>(v))}; }
  static double to(Half v) { return col::detail::half_to_float(v.bits); }
};
template <>
struct Elem<BHalf> {
  static BHalf from(double v) { return {col::detail::float_to_bfloat16(static_cast<float>(v))}; }
  static double to(BHalf v) { return col::detail::bfloat16_to_float(v.bits); }
};

// The expected reduction of element i over all ranks, computed the way the contract says:
// in the element type (wrapping for uint8, truncating division for integer averages), or
// in float32 rounded once for the half types.
template <typename T>
double expected(col::ReduceOp op, int world, size_t i) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BHalf>) {
    float acc = static_cast<float>(Elem<T>::to(Elem<T>::from(input_value(0, i))));
    for (int r = 1; r < world; ++r) {
      float v = static_cast<float>(Elem<T>::to(Elem<T>::from(input_value(r, i))));
      switch (op) {
        case col::ReduceOp::kSum: case col::ReduceOp::kAvg: acc += v; break;
        case col::ReduceOp::kProduct: acc *= v; break;
        case col::ReduceOp::kMin: acc = std::min(acc, v); break;
        case col::ReduceOp::kMax: acc = std::max(acc, v); break;
      }
    }
    if (op == col::ReduceOp::kAvg) acc /= static_cast<float>(world);
    return Elem<T>::to(Elem<T>::from(acc));
  } else {
    T acc = Elem<T>::from(input_value(0, i));
    for (int r = 1; r < world; ++r) {
      T v = Elem<T>::from(input_value(r, i));
      switch (op) {
        case col::ReduceOp::kSum: case col::ReduceOp::kAvg: acc = static_cast<T>(acc + v); break;
        case col::ReduceOp::kProduct: acc = static_cast<T>(acc * v); break;
        case col::ReduceOp::kMin: acc = std::min(acc, v); break;
        case col::ReduceOp::kMax: acc = std::max(acc, v); break;
      }
    }
    if (op == col::ReduceOp::kAvg) acc = static_cast<T>(acc / static_cast<T>(world));
    return Elem<T>::to(acc);
  }
}

template <typename T>
std::vector<T> inputs_of(int rank, size_t n, size_t offset = 0) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Elem<T>::from(input_value(rank, offset + i));
  return v;
}

// Checks every op for one type and size; returns the first mismatch, or "".
template <typename T>
std::string check_type(col::Communicator& comm, col::DataType type, size_t n) {
  const int world = comm.world_size(), rank = comm.rank();
  std::ostringstream err;
  auto mismatch = [&](const char* what, size_t i, double got, double want) {
    err << col::to_string(type) << " " << what << " n=" << n << " world=" << world << " rank=" << rank << " at " << i
        << ": got " << got << ", want " << want;
    return err.str();
  };
  for (col::ReduceOp op : {col::ReduceOp::kSum, col::ReduceOp::kAvg, col::ReduceOp::kMin, col::ReduceOp::kMax,
                           col::ReduceOp::kProduct}) {
    auto data = inputs_of<T>(rank, n);
    comm.allreduce(data.data(), n, type, op);
    for (size_t i = 0; i < n; ++i)
      if (Elem<T>::to(data[i]) != expected<T>(op, world, i))
        return mismatch((std::string("allreduce ") + col::to_string(op)).c_str(), i, Elem<T>::to(data[i]),
                        expected<T>(op, world, i));
  }
  {
    auto data = inputs_of<T>(rank, n);
    int root = world - 1;
    comm.broadcast(data.data(), n, type, root);
    for (size_t i = 0; i < n; ++i)
      if (Elem<T>::to(data[i]) != Elem<T>::to(Elem<T>::from(input_value(root, i))))
        return mismatch("broadcast", i, Elem<T>::to(data[i]), input_value(root, i));
  }
  {
    auto mine = inputs_of<T>(rank, n);
    std::vector<T> all(n * static_cast<size_t>(world));
    comm.allgather(mine.data(), all.data(), n, type);
    for (int r = 0; r < world; ++r)
      for (size_t i = 0; i < n; ++i)
        if (Elem<T>::to(all[static_cast<size_t>(r) * n + i]) != Elem<T>::to(Elem<T>::from(input_value(r, i))))
          return mismatch("allgather", static_cast<size_t>(r) * n + i, Elem<T>::to(all[static_cast<size_t>(r) * n + i]),
                          input_value(r, i));
  }
  for (col::ReduceOp op : {col::ReduceOp::kSum, col::ReduceOp::kMax}) {
    // Block b of every rank's send buffer holds elements b*n .. b*n+n-1 of its inputs.
    auto send = inputs_of<T>(rank, n * static_cast<size_t>(world));
    std::vector<T> out(n);
    comm.reduce_scatter(send.data(), out.data(), n, type, op);
    for (size_t i = 0; i < n; ++i) {
      double want = expected<T>(op, world, static_cast<size_t>(rank) * n + i);
      if (Elem<T>::to(out[i]) != want) return mismatch("reduce_scatter", i, Elem<T>::to(out[i]), want);
    }
  }
  {
    auto data = inputs_of<T>(rank, n);
    comm.reduce(data.data(), n, type, col::ReduceOp::kSum, 0);
    for (size_t i = 0; i < n; ++i) {
      double want = rank == 0 ? expected<T>(col::ReduceOp::kSum, world, i) : Elem<T>::to(Elem<T>::from(input_value(rank, i)));
      if (Elem<T>::to(data[i]) != want) return mismatch("reduce", i, Elem<T>::to(data[i]), want);
    }
  }
  comm.barrier();
  if (world > 1) {
    // A ring: everyone sends its inputs to the next rank and receives the previous one's.
    auto mine = inputs_of<T>(rank, n);
    std::vector<T> got(n);
    // Sends complete when the peer posts its recv: even ranks send first, odd ones receive
    // first, so no cycle of sends waits on itself.
    if (rank % 2 == 0) {
      comm.send(mine.data(), n, type, (rank + 1) % world);
      comm.recv(got.data(), n, type, (rank + world - 1) % world);
    } else {
      comm.recv(got.data(), n, type, (rank + world - 1) % world);
      comm.send(mine.data(), n, type, (rank + 1) % world);
    }
    int from = (rank + world - 1) % world;
    for (size_t i = 0; i < n; ++i)
      if (Elem<T>::to(got[i]) != Elem<T>::to(Elem<T>::from(input_value(from, i))))
        return mismatch("send/recv", i, Elem<T>::to(got[i]), input_value(from, i));
  }
  return "";
}

// One rank's whole suite: every op x type x size on a fresh group.
std::string run_suite(std::string group, int world, int rank, int backend) {
  try {
    auto comm = col::Communicator::join(
        {.group = group, .world_size = world, .rank = rank, .backend = static_cast<col::BackendKind>(backend)});
    std::vector<size_t> sizes = {0, 1, 1001, static_cast<size_t>(world) * 613 + 1};
    for (size_t n : sizes) {
      std::string e;
      if (e = check_type<float>(comm, col::DataType::kFloat32, n); !e.empty()) return e;
      if (e = check_type<double>(comm, col::DataType::kFloat64, n); !e.empty()) return e;
      if (e = check_type<Half>(comm, col::DataType::kFloat16, n); !e.empty()) return e;
      if (e = check_type<BHalf>(comm, col::DataType::kBFloat16, n); !e.empty()) return e;
      if (e = check_type<int32_t>(comm, col::DataType::kInt32, n); !e.empty()) return e;
      if (e = check_type<int64_t>(comm, col::DataType::kInt64, n); !e.empty()) return e;
      if (e = check_type<uint8_t>(comm, col::DataType::kUInt8, n); !e.empty()) return e;
    }
    const size_t big = (64u << 20) / 4;
    if (comm.backend() == col::BackendKind::kSharedMemory) {
      // Every op on 64 MiB of float32 (per rank, and per block for reduce_scatter).
      if (std::string e = check_type<float>(comm, col::DataType::kFloat32, big); !e.empty()) return e;
      return std::string("ok ") + col::to_string(comm.backend());
    }
    // The network backends: allreduce (sum) and reduce_scatter on 64 MiB of float32.
    auto data = inputs_of<float>(rank, big);
    comm.allreduce(data.data(), big, col::DataType::kFloat32, col::ReduceOp::kSum);
    for (size_t i = 0; i < big; ++i)
      if (data[i] != expected<float>(col::ReduceOp::kSum, world, i))
        return "64 MiB allreduce wrong at " + std::to_string(i);
    std::vector<float> part(big / static_cast<size_t>(world));
    auto send = inputs_of<float>(rank, part.size() * static_cast<size_t>(world));
    comm.reduce_scatter(send.data(), part.data(), part.size(), col::DataType::kFloat32, col::ReduceOp::kSum);
    for (size_t i = 0; i < part.size(); ++i)
      if (part[i] != expected<float>(col::ReduceOp::kSum, world, static_cast<size_t>(rank) * part.size() + i))
        return "64 MiB reduce_scatter wrong at " + std::to_string(i);
    return std::string("ok ") + col::to_string(comm.backend());
  } catch (const std::exception& e) {
    return std::string("rank ") + std::to_string(rank) + " threw: " + e.what();
  }
}

struct Outcome {
  std::string error;
  int64_t failed_after_ms = -1;
  GANTRY_FIELDS(error, failed_after_ms);
};

// Allreduces until the group fails; rank `victim` SIGKILLs itself after 3 rounds.
Outcome allreduce_until_failure(std::string group, int world, int rank, int victim) {
  Outcome out;
  try {
    auto comm = col::Communicator::join({.group = group, .world_size = world, .rank = rank});
    std::vector<float> data(1 << 20, 1.0f);
    auto last_ok = std::chrono::steady_clock::now();
    for (int round = 0; round < 100000; ++round) {
      if (rank == victim && round == 3) ::raise(SIGKILL);
      try {
        comm.allreduce(std::span<float>(data));
      } catch (const col::CollectiveError& e) {
        out.error = e.what();
        out.failed_after_ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - last_ok).count();
        return out;
      }
      last_ok = std::chrono::steady_clock::now();
    }
  } catch (const std::exception& e) {
    out.error = std::string("unexpected: ") + e.what();
  }
  return out;
}

std::string join_and_allreduce(std::string group, int world, int rank) {
  try {
    auto comm = col::Communicator::join({.group = group, .world_size = world, .rank = rank, .join_timeout = 20s});
    std::vector<int64_t> v = {rank + 1};
    comm.allreduce(std::span<int64_t>(v));
    return std::to_string(v[0]);
  } catch (const std::exception& e) {
    return std::string("threw: ") + e.what();
  }
}

class Rank {
 public:
  static Rank* create() { return new Rank(); }
  std::string suite(std::string group, int world, int rank, int backend) { return run_suite(group, world, rank, backend); }
};

}  // namespace

GANTRY_REMOTE(run_suite, allreduce_until_failure, join_and_allreduce);
GANTRY_REMOTE(Rank::create, &Rank::suite);

namespace {

class Collective : public ::testing::Test {
 protected:
  void SetUp() override { gantry::init({.num_cpus = 4}); }
  void TearDown() override { gantry::shutdown(); }
};

void expect_all_ok(const std::vector<std::string>& results, const char* backend) {
  for (size_t r = 0; r < results.size(); ++r) EXPECT_EQ(results[r], std::string("ok ") + backend) << "rank " << r;
}

TEST_F(Collective, EveryOpTypeAndSizeOnSharedMemoryWorldSizesOneToFour) {
  for (int world = 1; world <= 4; ++world) {
    // Ranks are actors: each its own process.
    std::vector<gantry::ActorHandle<Rank>> ranks;
    std::vector<gantry::ObjectRef<std::string>> results;
    for (int r = 0; r < world; ++r) ranks.push_back(gantry::actor(Rank::create).options({.num_cpus = 1}).remote());
    for (int r = 0; r < world; ++r)
      results.push_back(ranks[static_cast<size_t>(r)].task(&Rank::suite).remote("shm-" + std::to_string(world), world, r,
                                                                                  static_cast<int>(col::BackendKind::kAuto)));
    expect_all_ok(gantry::get(results), "shm");
    for (auto& a : ranks) gantry::kill(a);
  }
}

TEST_F(Collective, EveryOpTypeAndSizeOnGlooWorldSizesOneToFour) {
  for (int world = 1; world <= 4; ++world) {
    std::vector<gantry::ObjectRef<std::string>> results;
    for (int r = 0; r < world; ++r)
      results.push_back(gantry::task(run_suite).remote("gloo-" + std::to_string(world), world, r,
                                                       static_cast<int>(col::BackendKind::kGloo)));
    expect_all_ok(gantry::get(results), "gloo");
  }
}

TEST_F(Collective, EveryOpTypeAndSizeOnAuthenticatedTcpWorldSizesOneToFour) {
  for (int world = 1; world <= 4; ++world) {
    std::vector<gantry::ObjectRef<std::string>> results;
    for (int r = 0; r < world; ++r)
      results.push_back(gantry::task(run_suite).remote("tcp-" + std::to_string(world), world, r,
                                                       static_cast<int>(col::BackendKind::kTcp)));
    expect_all_ok(gantry::get(results), "tcp");
  }
}

TEST_F(Collective, DriverJoinsWithTasksAndAsyncOpsCompleteInOrder) {
  auto peer = gantry::task(join_and_allreduce).remote("mixed", 2, 1);
  auto comm = col::Communicator::join({.group = "mixed", .world_size = 2, .rank = 0});
  std::vector<int64_t> v = {1};
  comm.allreduce(std::span<int64_t>(v));
  EXPECT_EQ(v[0], 3);
  EXPECT_EQ(peer.get(), "3");

  auto solo = col::Communicator::join({.group = "solo", .world_size = 1, .rank = 0});
  std::vector<float> a(1000, 1.0f), b(1000, 2.0f);
  std::vector<col::Work> works;
  for (int i = 0; i < 20; ++i) works.push_back(solo.allreduce_async(i % 2 ? b.data() : a.data(), 1000, col::DataType::kFloat32));
  works.back().wait();
  for (auto& w : works) EXPECT_TRUE(w.done()) << "ops complete in issue order";
  for (auto& w : works) EXPECT_TRUE(w.succeeded());
}

TEST_F(Collective, RankJoinedTwiceOrWithAnotherWorldSizeIsAClearError) {
  auto first = gantry::task(join_and_allreduce).remote("twice", 2, 0);
  // Wait until the task holds rank 0.
  ASSERT_TRUE(gantry::kv::wait("gantry/collective/twice/member/0", 20s).has_value());
  try {
    col::Communicator::join({.group = "twice", .world_size = 2, .rank = 0});
    FAIL() << "rank 0 joined twice";
  } catch (const col::CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("joined twice"), std::string::npos) << e.what();
  }
  try {
    col::Communicator::join({.group = "twice", .world_size = 3, .rank = 1});
    FAIL() << "a different world size joined";
  } catch (const col::CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("world_size"), std::string::npos) << e.what();
  }
  {
    auto comm = col::Communicator::join({.group = "twice", .world_size = 2, .rank = 1});
    std::vector<int64_t> v = {2};
    comm.allreduce(std::span<int64_t>(v));
    EXPECT_EQ(v[0], 3);
  }
  EXPECT_EQ(first.get(), "3");
  EXPECT_THROW(col::Communicator::join({.group = "", .world_size = 2, .rank = 0}), col::CollectiveError);
  EXPECT_THROW(col::Communicator::join({.group = "g", .world_size = 2, .rank = 2}), col::CollectiveError);
  EXPECT_THROW(col::Communicator::join({.group = "g", .world_size = 0, .rank = 0}), col::CollectiveError);
}

TEST_F(Collective, NcclWithoutADeviceIsAClearErrorAndHostBuffersStayOnTheHostBackend) {
  try {
    auto comm = col::Communicator::join({.group = "gpu", .world_size = 1, .rank = 0, .backend = col::BackendKind::kNccl});
    EXPECT_EQ(comm.backend(), col::BackendKind::kNccl) << "a device is present";
    std::vector<float> host(4, 1.0f);
    EXPECT_THROW(comm.allreduce(std::span<float>(host)), col::CollectiveError) << "NCCL takes device buffers only";
  } catch (const col::CollectiveError& e) {
    std::string what = e.what();
    EXPECT_TRUE(what.find("CUDA") != std::string::npos || what.find("NCCL") != std::string::npos) << what;
  }
  // An automatic group given host buffers never touches CUDA.
  auto comm = col::Communicator::join({.group = "host", .world_size = 1, .rank = 0});
  std::vector<double> v = {2.5};
  comm.allreduce(std::span<double>(v));
  EXPECT_EQ(v[0], 2.5);
  EXPECT_EQ(comm.backend(), col::BackendKind::kSharedMemory);
}

TEST_F(Collective, MissingRankTimesOutNamingIt) {
  auto t0 = std::chrono::steady_clock::now();
  try {
    col::Communicator::join({.group = "lonely", .world_size = 3, .rank = 0, .join_timeout = 500ms});
    FAIL() << "joined without its peers";
  } catch (const col::CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("ranks 1, 2 did not join"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

void expect_dead_rank_detected(int backend_world, const std::string& group) {
  std::vector<gantry::ObjectRef<Outcome>> outs;
  for (int r = 0; r < backend_world; ++r)
    outs.push_back(gantry::task(allreduce_until_failure).options({.max_retries = 0}).remote(group, backend_world, r, backend_world - 1));
  for (int r = 0; r + 1 < backend_world; ++r) {
    Outcome o = outs[static_cast<size_t>(r)].get(60s);
    EXPECT_NE(o.error, "") << "rank " << r;
    EXPECT_EQ(o.error.find("unexpected"), std::string::npos) << o.error;
    EXPECT_GE(o.failed_after_ms, 0) << o.error;
    EXPECT_LE(o.failed_after_ms, 5000) << "rank " << r << " noticed the dead rank late: " << o.error;
    EXPECT_NE(o.error.find("rank " + std::to_string(backend_world - 1)), std::string::npos)
        << "the error names the dead rank: " << o.error;
  }
  EXPECT_THROW(outs.back().get(60s), gantry::Error) << "the victim's task died";
}

TEST_F(Collective, KilledRankFailsTheOthersWithinFiveSeconds) {
  expect_dead_rank_detected(3, "victim");
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
