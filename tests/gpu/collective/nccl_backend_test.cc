// The NCCL backend with its ranks as threads of this process (FakeStore rendezvous), rank r
// on CUDA device r. Without a usable device, or in a build without CUDA/NCCL, the device
// tests skip; the test that building a backend without a device fails cleanly runs
// everywhere (on a GPU machine, in a child process that sees no device).
//
// The test calls the CUDA runtime through dlopen, as the backend does, so it needs no CUDA
// headers and builds without CUDA; it shares the backend's loaded libcudart.

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backend_test_support.h"
#include "collective/backend.h"
#include "collective/fake_store.h"
#include "collective/reduce_kernels.h"

extern char** environ;

namespace {

namespace col = gantry::collective;
using namespace gantry::collective::testing;
using std::chrono::milliseconds;

constexpr milliseconds kOpTimeout(60000);
constexpr ReduceOp kOps[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax, ReduceOp::kProduct};
// Set in the child process the no-device test starts on a GPU machine.
constexpr const char* kChildMarker = "GANTRY_NCCL_TEST_NO_DEVICE_CHILD";

// ---- The CUDA runtime, as far as the test needs it -------------------------------------

// cudaMemcpyKind values.
constexpr int kHostToDevice = 1;
constexpr int kDeviceToHost = 2;

// The CUDA runtime calls the test makes (each returns a cudaError_t; 0 is success), and how
// many devices it can use.
struct TestCuda {
  int (*get_device_count)(int*) = nullptr;
  int (*set_device)(int) = nullptr;
  int (*device_malloc)(void**, size_t) = nullptr;
  int (*device_free)(void*) = nullptr;
  int (*memcpy)(void*, const void*, size_t, int) = nullptr;
  int devices = 0;
  std::string unusable;  // why no device can be used; empty when devices > 0
};

TestCuda load_test_cuda() {
  TestCuda cuda;
#ifndef GANTRY_HAVE_NCCL
  cuda.unusable = "gantry was built without CUDA/NCCL";
  return cuda;
#endif
  void* lib = nullptr;
  for (const char* name : {"libcudart.so.13", "libcudart.so"})
    if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  if (lib == nullptr) {
    cuda.unusable = "the CUDA runtime (libcudart.so.13) cannot be loaded";
    return cuda;
  }
  cuda.get_device_count = reinterpret_cast<int (*)(int*)>(dlsym(lib, "cudaGetDeviceCount"));
  cuda.set_device = reinterpret_cast<int (*)(int)>(dlsym(lib, "cudaSetDevice"));
  cuda.device_malloc = reinterpret_cast<int (*)(void**, size_t)>(dlsym(lib, "cudaMalloc"));
  cuda.device_free = reinterpret_cast<int (*)(void*)>(dlsym(lib, "cudaFree"));
  cuda.memcpy = reinterpret_cast<int (*)(void*, const void*, size_t, int)>(dlsym(lib, "cudaMemcpy"));
  if (!cuda.get_device_count || !cuda.set_device || !cuda.device_malloc || !cuda.device_free || !cuda.memcpy) {
    cuda.unusable = "the CUDA runtime lacks an entry point the test needs";
    return cuda;
  }
  int err = cuda.get_device_count(&cuda.devices);
  if (err != 0) {
    cuda.devices = 0;
    cuda.unusable = "cudaGetDeviceCount failed with cudaError_t " + std::to_string(err) + " (no driver or no device)";
  } else if (cuda.devices < 1) {
    cuda.unusable = "the CUDA runtime sees no device";
  }
  return cuda;
}

const TestCuda& test_cuda() {
  static const TestCuda cuda = load_test_cuda();
  return cuda;
}

void check_cuda(int err, const char* call) {
  if (err != 0) throw std::runtime_error(std::string(call) + " failed with cudaError_t " + std::to_string(err));
}

// A cudaMalloc'ed buffer on one device, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes) : device_(device) {
    check_cuda(test_cuda().set_device(device_), "cudaSetDevice");
    check_cuda(test_cuda().device_malloc(&data_, bytes == 0 ? 1 : bytes), "cudaMalloc");
  }
  ~DeviceBuffer() {
    test_cuda().set_device(device_);
    test_cuda().device_free(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return data_; }

  template <typename T>
  void upload(const std::vector<T>& host) {
    check_cuda(test_cuda().memcpy(data_, host.data(), host.size() * sizeof(T), kHostToDevice), "cudaMemcpy");
  }
  template <typename T>
  std::vector<T> download(size_t count) const {
    std::vector<T> host(count);
    check_cuda(test_cuda().memcpy(host.data(), data_, count * sizeof(T), kDeviceToHost), "cudaMemcpy");
    return host;
  }

 private:
  int device_;
  void* data_ = nullptr;
};

// ---- Element types and the host reference ----------------------------------------------

struct Float32 {
  using Storage = float;
  static constexpr DataType kType = DataType::kFloat32;
  static constexpr bool kIntegral = false;
  static Storage make(double v) { return static_cast<float>(v); }
  static double value(Storage s) { return s; }
};
struct BFloat16 {
  using Storage = uint16_t;
  static constexpr DataType kType = DataType::kBFloat16;
  static constexpr bool kIntegral = false;
  static Storage make(double v) { return col::detail::float_to_bfloat16(static_cast<float>(v)); }
  static double value(Storage s) { return col::detail::bfloat16_to_float(s); }
};
struct Int64 {
  using Storage = int64_t;
  static constexpr DataType kType = DataType::kInt64;
  static constexpr bool kIntegral = true;
  static Storage make(double v) { return static_cast<int64_t>(v); }
  static double value(Storage s) { return static_cast<double>(s); }
};

// Input element i of `rank`: a small integer, so that sums, products and halves of two
// ranks' values are exact in every type, bfloat16 included.
int input(int rank, size_t i) { return static_cast<int>((rank * 7 + i * 13 + 3) % 11) - 5; }

// Element i of the reduction over `world` ranks: kAvg divides the sum by the world size,
// truncating for integer types (gantry's rule, and NCCL's).
double expected(int world, size_t i, ReduceOp op, bool integral) {
  double acc = input(0, i);
  for (int r = 1; r < world; ++r) acc = combine<double>(acc, input(r, i), op);
  if (op == ReduceOp::kAvg) acc = integral ? static_cast<double>(static_cast<int64_t>(acc) / world) : acc / world;
  return acc;
}

template <typename E>
std::vector<typename E::Storage> inputs_of(int rank, size_t count) {
  std::vector<typename E::Storage> host(count);
  for (size_t i = 0; i < count; ++i) host[i] = E::make(input(rank, i));
  return host;
}

// ---- Ranks as threads --------------------------------------------------------------------

BackendContext context_for(int rank, int world, std::shared_ptr<FakeStore> store, milliseconds op_timeout) {
  BackendContext context;
  context.group = "nccl-test";
  context.rank = rank;
  context.world_size = world;
  context.store = std::move(store);
  context.op_timeout = op_timeout;
  context.cuda_device = rank;
  return context;
}

// One backend per rank. Destroyed on one thread per rank, as processes leave a group: a
// healthy backend's destructor waits for NCCL to flush its communication with the peers.
class Group {
 public:
  explicit Group(std::vector<std::unique_ptr<Backend>> backends) : backends_(std::move(backends)) {}
  ~Group() {
    std::vector<std::thread> threads;
    for (auto& backend : backends_) threads.emplace_back([&backend] { backend.reset(); });
    for (auto& t : threads) t.join();
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  size_t size() const { return backends_.size(); }
  Backend& operator[](size_t rank) { return *backends_[rank]; }

 private:
  std::vector<std::unique_ptr<Backend>> backends_;
};

// Builds `world` backends concurrently (NCCL's init is collective), rank r on device r.
// Empty (with a test failure) when any rank failed.
Group build_backends(int world, milliseconds op_timeout = kOpTimeout) {
  auto store = std::make_shared<FakeStore>();
  std::vector<std::unique_ptr<Backend>> backends = build_on_threads(
      world, [&](int r) { return col::detail::make_nccl_backend(context_for(r, world, store, op_timeout)); });
  if (std::find(backends.begin(), backends.end(), nullptr) != backends.end()) backends.clear();
  return Group(std::move(backends));
}

// Runs body(rank, backend) on one thread per rank, with the rank's device current.
void on_ranks(Group& backends, const std::function<void(int, Backend&)>& body) {
  std::vector<std::thread> threads;
  for (size_t r = 0; r < backends.size(); ++r)
    threads.emplace_back([&, r] {
      try {
        check_cuda(test_cuda().set_device(static_cast<int>(r)), "cudaSetDevice");
        body(static_cast<int>(r), backends[r]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << " threw: " << e.what();
      }
    });
  for (auto& t : threads) t.join();
}

// Runs `body` on its own thread and waits at most `limit`. A hang fails the whole test
// binary at once (the stuck thread still refers to the test's state).
void run_or_die(milliseconds limit, const std::string& what, std::function<void()> body) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  std::thread thread([body = std::move(body), done, what] {
    try {
      body();
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << " threw: " << e.what();
    }
    done->set_value();
  });
  if (finished.wait_for(limit) != std::future_status::ready) {
    std::cerr << "FAILED: " << what << " did not finish within " << limit.count() << " ms\n" << std::flush;
    std::_Exit(1);
  }
  thread.join();
}

// ---- Everywhere: no device -------------------------------------------------------------

// Runs this test binary again, filtered to `test`, with no CUDA device visible; its exit
// status (or -1 when it had to be killed after `limit`).
int run_self_without_devices(const std::string& test, milliseconds limit) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, "CUDA_VISIBLE_DEVICES=", 21) != 0) env_strings.emplace_back(*e);
  env_strings.emplace_back("CUDA_VISIBLE_DEVICES=");
  env_strings.emplace_back(std::string(kChildMarker) + "=1");
  std::vector<char*> env;
  for (auto& s : env_strings) env.push_back(s.data());
  env.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string filter = "--gtest_filter=" + test;
  char* argv[] = {self.data(), filter.data(), nullptr};
  pid_t pid;
  if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, env.data()) != 0) return -2;
  auto start = Clock::now();
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() - start > limit) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -3;
}

TEST(NcclBackendWithoutDevice, BuildingThrowsCollectiveErrorNamingTheCause) {
  if (test_cuda().devices > 0) {
    // A GPU machine: hide its devices from a child process, which runs this test again.
    ASSERT_EQ(std::getenv(kChildMarker), nullptr) << "CUDA_VISIBLE_DEVICES= did not hide the devices";
    EXPECT_EQ(run_self_without_devices("NcclBackendWithoutDevice.BuildingThrowsCollectiveErrorNamingTheCause",
                                       milliseconds(120000)),
              0)
        << "the child process without devices failed, crashed or hung (-1)";
    return;
  }
  auto store = std::make_shared<FakeStore>();
  BackendContext context = context_for(0, 1, store, milliseconds(10000));
  context.group = "no-device-group";
  std::string message;
  bool built = false;
  bool other_exception = false;
  run_or_die(milliseconds(60000), "make_nccl_backend without a device", [&] {
    try {
      col::detail::make_nccl_backend(context);
      built = true;
    } catch (const CollectiveError& e) {
      message = e.what();
    } catch (const std::exception& e) {
      other_exception = true;
      message = e.what();
    }
  });
  EXPECT_FALSE(built) << "a backend was built although " << test_cuda().unusable;
  EXPECT_FALSE(other_exception) << "not a CollectiveError: " << message;
  std::cout << "  make_nccl_backend without a device: " << message << "\n";
  EXPECT_CONTAINS(message, "no-device-group");
  EXPECT_CONTAINS(message, "CUDA");
  // Says what to do: install something, or use a host backend.
  EXPECT_TRUE(message.find("kSharedMemory") != std::string::npos || message.find("install") != std::string::npos)
      << message;
}

// ---- With devices ------------------------------------------------------------------------

// Why `world` ranks (one device each) cannot run here; empty when they can.
std::string missing_devices(int world) {
  const TestCuda& cuda = test_cuda();
  if (!cuda.unusable.empty()) return "no usable CUDA device: " + cuda.unusable;
  if (cuda.devices < world)
    return std::to_string(world) + " ranks need " + std::to_string(world) + " CUDA devices; this machine has " +
           std::to_string(cuda.devices);
  return {};
}

// The parameter is the world size; rank r uses device r.
class NcclBackendTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (std::string why = missing_devices(world()); !why.empty()) GTEST_SKIP() << why;
  }
  int world() const { return GetParam(); }
};

// Point to point and failures while an op waits for a peer: two ranks.
class NcclBackendTwoRanksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = missing_devices(2); !why.empty()) GTEST_SKIP() << why;
  }
};

template <typename E>
void check_allreduce(int rank, int world, Backend& backend) {
  using Storage = typename E::Storage;
  for (size_t count : {size_t{7}, size_t{65537}})
    for (ReduceOp op : kOps) {
      DeviceBuffer buffer(rank, count * sizeof(Storage));
      buffer.upload(inputs_of<E>(rank, count));
      backend.allreduce(buffer.get(), count, E::kType, op);
      std::vector<Storage> out = buffer.download<Storage>(count);
      size_t wrong = 0, first = 0;
      for (size_t i = 0; i < count; ++i)
        if (E::value(out[i]) != expected(world, i, op, E::kIntegral) && wrong++ == 0) first = i;
      EXPECT_EQ(wrong, 0u) << col::to_string(E::kType) << " " << col::to_string(op) << " of " << count << " on rank "
                           << rank << ": element " << first << " is " << E::value(out[first]) << ", expected "
                           << expected(world, first, op, E::kIntegral);
    }
}

TEST_P(NcclBackendTest, AllreduceMatchesTheHostForEveryOpAndType) {
  auto backends = build_backends(world());
  ASSERT_EQ(backends.size(), static_cast<size_t>(world()));
  on_ranks(backends, [&](int rank, Backend& backend) {
    check_allreduce<Float32>(rank, world(), backend);
    check_allreduce<BFloat16>(rank, world(), backend);
    check_allreduce<Int64>(rank, world(), backend);
  });
}

TEST_P(NcclBackendTest, BroadcastReduceAllgatherReduceScatterAndBarrier) {
  auto backends = build_backends(world());
  ASSERT_EQ(backends.size(), static_cast<size_t>(world()));
  const int n = world();
  const int root = n - 1;
  constexpr size_t kCount = 1001;
  on_ranks(backends, [&](int rank, Backend& backend) {
    {
      DeviceBuffer buffer(rank, kCount * sizeof(float));
      buffer.upload(inputs_of<Float32>(rank, kCount));
      backend.broadcast(buffer.get(), kCount, DataType::kFloat32, root);
      EXPECT_EQ(buffer.download<float>(kCount), inputs_of<Float32>(root, kCount)) << "broadcast on rank " << rank;
    }
    {
      DeviceBuffer buffer(rank, kCount * sizeof(int64_t));
      buffer.upload(inputs_of<Int64>(rank, kCount));
      backend.reduce(buffer.get(), kCount, DataType::kInt64, ReduceOp::kMax, 0);
      std::vector<int64_t> want = inputs_of<Int64>(rank, kCount);
      if (rank == 0)
        for (size_t i = 0; i < kCount; ++i) want[i] = static_cast<int64_t>(expected(n, i, ReduceOp::kMax, true));
      EXPECT_EQ(buffer.download<int64_t>(kCount), want) << "reduce (max to rank 0) on rank " << rank;
    }
    {
      DeviceBuffer send(rank, kCount * sizeof(float));
      DeviceBuffer recv(rank, n * kCount * sizeof(float));
      send.upload(inputs_of<Float32>(rank, kCount));
      backend.allgather(send.get(), recv.get(), kCount, DataType::kFloat32);
      std::vector<float> want;
      for (int r = 0; r < n; ++r)
        for (float v : inputs_of<Float32>(r, kCount)) want.push_back(v);
      EXPECT_EQ(recv.download<float>(n * kCount), want) << "allgather on rank " << rank;
    }
    {
      DeviceBuffer send(rank, n * kCount * sizeof(float));
      DeviceBuffer recv(rank, kCount * sizeof(float));
      send.upload(inputs_of<Float32>(rank, n * kCount));
      backend.reduce_scatter(send.get(), recv.get(), kCount, DataType::kFloat32, ReduceOp::kSum);
      std::vector<float> want(kCount);
      for (size_t i = 0; i < kCount; ++i)
        want[i] = static_cast<float>(expected(n, rank * kCount + i, ReduceOp::kSum, false));
      EXPECT_EQ(recv.download<float>(kCount), want) << "reduce_scatter on rank " << rank;
    }
    for (int i = 0; i < 3; ++i) backend.barrier();
    // Zero elements: nothing to move, and no buffer needed.
    backend.allreduce(nullptr, 0, DataType::kFloat32, ReduceOp::kSum);
  });
}

TEST_P(NcclBackendTest, RefusesHostBuffers) {
  auto backends = build_backends(world());
  ASSERT_EQ(backends.size(), static_cast<size_t>(world()));
  on_ranks(backends, [&](int rank, Backend& backend) {
    std::vector<float> host(16, 1.0f);
    try {
      backend.allreduce(host.data(), host.size(), DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "rank " << rank << ": an allreduce of a host buffer did not throw";
    } catch (const CollectiveError& e) {
      EXPECT_CONTAINS(e.what(), "not CUDA memory");
    }
    backend.barrier();  // the refused op did not break the communicator
  });
}

TEST_P(NcclBackendTest, AbortFailsLaterOpsWithItsReason) {
  auto backends = build_backends(world());
  ASSERT_EQ(backends.size(), static_cast<size_t>(world()));
  on_ranks(backends, [](int, Backend& backend) { backend.barrier(); });
  for (size_t r = 0; r < backends.size(); ++r) backends[r].abort("stopped by the test");
  for (size_t r = 0; r < backends.size(); ++r) backends[r].abort("a second abort is ignored");
  on_ranks(backends, [](int rank, Backend& backend) {
    DeviceBuffer buffer(rank, 4 * sizeof(float));
    try {
      backend.allreduce(buffer.get(), 4, DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "rank " << rank << ": an op after abort did not throw";
    } catch (const CollectiveError& e) {
      EXPECT_STREQ(e.what(), "stopped by the test");
    }
  });
}

TEST_F(NcclBackendTwoRanksTest, SendRecvBetweenTwoRanks) {
  auto backends = build_backends(2);
  ASSERT_EQ(backends.size(), 2u);
  constexpr size_t kCount = 4099;
  on_ranks(backends, [&](int rank, Backend& backend) {
    const int peer = 1 - rank;
    DeviceBuffer out(rank, kCount * sizeof(float));
    DeviceBuffer in(rank, kCount * sizeof(float));
    out.upload(inputs_of<Float32>(rank, kCount));
    // Rank 0 sends first, rank 1 receives first: blocking sends need ordered calls.
    if (rank == 0) {
      backend.send(out.get(), kCount, DataType::kFloat32, peer);
      backend.recv(in.get(), kCount, DataType::kFloat32, peer);
    } else {
      backend.recv(in.get(), kCount, DataType::kFloat32, peer);
      backend.send(out.get(), kCount, DataType::kFloat32, peer);
    }
    EXPECT_EQ(in.download<float>(kCount), inputs_of<Float32>(peer, kCount)) << "recv on rank " << rank;
  });
}

TEST_F(NcclBackendTwoRanksTest, AbortFromAnotherThreadEndsABlockedRecv) {
  auto backends = build_backends(2);
  ASSERT_EQ(backends.size(), 2u);
  std::string error;
  double returned_after_abort = -1;
  Clock::time_point aborted_at;
  std::atomic<bool> aborted{false};
  // Rank 1 waits for a message rank 0 never sends.
  run_or_die(milliseconds(60000), "a recv aborted from another thread", [&] {
    std::thread aborter([&] {
      std::this_thread::sleep_for(milliseconds(500));
      aborted_at = Clock::now();
      aborted = true;
      backends[1].abort("aborted while receiving");
    });
    try {
      check_cuda(test_cuda().set_device(1), "cudaSetDevice");
      DeviceBuffer buffer(1, 1024 * sizeof(float));
      backends[1].recv(buffer.get(), 1024, DataType::kFloat32, 0);
      error = "the recv returned normally";
    } catch (const CollectiveError& e) {
      error = e.what();
      if (aborted) returned_after_abort = seconds_since(aborted_at);
    }
    aborter.join();
  });
  EXPECT_EQ(error, "aborted while receiving");
  EXPECT_GE(returned_after_abort, 0.0) << "the recv ended before the abort";
  EXPECT_LT(returned_after_abort, 10.0);
  backends[0].abort("the test is over");
}

TEST_F(NcclBackendTwoRanksTest, OpTimeoutAbortsAndThrows) {
  auto backends = build_backends(2, milliseconds(1500));
  ASSERT_EQ(backends.size(), 2u);
  std::string error, later;
  double took = -1;
  run_or_die(milliseconds(60000), "a recv with a 1.5 s op timeout", [&] {
    check_cuda(test_cuda().set_device(1), "cudaSetDevice");
    DeviceBuffer buffer(1, 1024 * sizeof(float));
    auto start = Clock::now();
    try {
      backends[1].recv(buffer.get(), 1024, DataType::kFloat32, 0);
    } catch (const CollectiveError& e) {
      error = e.what();
      took = seconds_since(start);
    }
    try {
      backends[1].barrier();
    } catch (const CollectiveError& e) {
      later = e.what();
    }
  });
  EXPECT_CONTAINS(error, "did not complete within 1500 ms");
  EXPECT_GE(took, 1.4);
  EXPECT_LT(took, 15.0);
  EXPECT_EQ(later, error) << "later ops throw the first failure";
  backends[0].abort("the test is over");
}

TEST(NcclBackendDeviceIndex, OutOfRangeThrows) {
  if (std::string why = missing_devices(1); !why.empty()) GTEST_SKIP() << why;
  auto store = std::make_shared<FakeStore>();
  BackendContext context = context_for(0, 1, store, milliseconds(5000));
  context.cuda_device = test_cuda().devices;
  try {
    col::detail::make_nccl_backend(context);
    ADD_FAILURE() << "built a backend on device " << context.cuda_device;
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "is not among the");
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, NcclBackendTest, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "_ranks";
                         });

}  // namespace
