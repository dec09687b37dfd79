// The NCCL backend: collectives on CUDA device buffers through NVIDIA's NCCL, one GPU per
// rank.
//
// Standalone build, for a GPU machine without gantry's other dependencies (gRPC etc.): from
// the repository root, the object file, then the test (it links only gtest and libdl;
// libcudart and libnccl are dlopen'ed), one command per line:
// clang-format off
//   g++ -std=c++20 -O2 -Wall -Wextra -Igpu/src -Igpu/include -Icore/include -isystem /usr/local/cuda/include -c gpu/src/collective/nccl_backend.cc -o /tmp/nccl_backend.o
//   g++ -std=c++20 -O2 -DGANTRY_HAVE_NCCL=1 -Igpu/src -Igpu/include -Icore/include -isystem /usr/local/cuda/include gpu/src/collective/nccl_backend.cc gpu/src/collective/types.cc gpu/src/collective/reduce_kernels.cc tests/gpu/collective/nccl_backend_test.cc -lgtest -lgtest_main -ldl -pthread -o /tmp/nccl_backend_test
// clang-format on
//
// Buffers. Every op takes pointers to CUDA device memory (cudaMalloc'ed or managed) of the
// device this rank uses: the communicator chooses this backend only for such buffers. A
// pageable host pointer, or memory of another device, is refused with CollectiveError
// before NCCL sees it (NCCL would fault on the device). Ops run on the backend's own
// stream, created to synchronise with the legacy default stream: what the caller queued
// there before the op is done before the op reads its buffers; work on the caller's other
// streams must be synchronised by the caller. Every op returns once the device finished
// it, so its results are ready to read from any stream.
//
// Loading. libcudart and libnccl.so.2 are dlopen'ed on first use and every CUDA runtime and
// NCCL function is called through the resolved pointers (the headers give only types and
// constants), so gantry links neither and runs on machines without a driver or NCCL. A
// missing library, no visible device or an NCCL error is a CollectiveError that says what
// is missing and what to do.
//
// Rendezvous. Rank 0 calls ncclGetUniqueId and publishes its 128 bytes in the group's
// store under "nccl/unique_id"; the others read them (waiting up to the op timeout). Each
// rank uses `BackendContext::cuda_device` among the devices it sees (its worker's
// CUDA_VISIBLE_DEVICES already narrows them to the ones gantry assigned, so it is 0).
//
// Waiting and failure. The communicator is nonblocking (ncclConfig_t::blocking = 0): its
// init and every enqueue return at once, possibly with ncclInProgress while NCCL connects
// peers in the background. An op enqueues on the stream, then polls
// ncclCommGetAsyncError (ncclInProgress while NCCL still enqueues; an error when a peer or
// the network failed) and cudaStreamQuery, sleeping 10 us growing to 1 ms between polls.
// So `abort(why)` from another thread can call ncclCommAbort, which makes kernels stuck in
// a collective exit, and the waiting op throws CollectiveError(why) within a poll; the op
// timeout aborts the same way. NCCL requires aborting a communicator after an
// asynchronous error, so any failure aborts it and every later op throws the first reason.
// The destructor finalizes a healthy communicator (NCCL's proxy may still be sending this
// rank's last data after its kernels finished) and destroys it; when that fails or takes
// longer than kFinalizeTimeout (peers leave at about the same time, but a crashed one never
// does), it aborts instead, which never waits for peers.
//
// Concurrency: ops run on the communicator's op thread, one at a time; `abort` may come
// from any thread. `mu_` guards `comm_` (ncclCommAbort frees the communicator, so no NCCL
// call on it may race with the abort: each runs under `mu_`, and the abort takes `comm_`
// out under `mu_`) and `failure_`. The calling thread's current CUDA device is restored
// after each call.

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "collective/backend.h"

namespace gantry::collective::detail {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kUniqueIdKey = "nccl/unique_id";
constexpr const char* kNcclLibrary = "libnccl.so.2";
// ncclCommInitRankConfig and nonblocking communicators came with NCCL 2.14.
constexpr int kMinNcclVersion = 21400;
constexpr std::chrono::microseconds kFirstPause(10);
constexpr std::chrono::microseconds kLongestPause(1000);
constexpr std::chrono::milliseconds kFinalizeTimeout(10000);

// The CUDA runtime and NCCL functions this backend calls, resolved once per process.
struct CudaApi {
  std::string error;  // why the libraries are unusable; empty when all resolved

  decltype(&::cudaGetDeviceCount) get_device_count = nullptr;
  decltype(&::cudaGetDevice) get_device = nullptr;
  decltype(&::cudaSetDevice) set_device = nullptr;
  decltype(&::cudaGetErrorName) error_name = nullptr;
  decltype(&::cudaGetErrorString) error_string = nullptr;
  decltype(&::cudaGetLastError) get_last_error = nullptr;
  decltype(&::cudaStreamCreateWithFlags) stream_create = nullptr;
  decltype(&::cudaStreamDestroy) stream_destroy = nullptr;
  decltype(&::cudaStreamQuery) stream_query = nullptr;
  cudaError_t (*device_malloc)(void**, size_t) = nullptr;  // cuda_runtime.h overloads cudaMalloc
  decltype(&::cudaFree) device_free = nullptr;
  decltype(&::cudaPointerGetAttributes) pointer_attributes = nullptr;

  decltype(&::ncclGetVersion) nccl_version = nullptr;
  decltype(&::ncclGetErrorString) nccl_error_string = nullptr;
  decltype(&::ncclGetLastError) nccl_last_error = nullptr;
  decltype(&::ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&::ncclCommInitRankConfig) comm_init_rank_config = nullptr;
  decltype(&::ncclCommGetAsyncError) comm_async_error = nullptr;
  decltype(&::ncclCommFinalize) comm_finalize = nullptr;
  decltype(&::ncclCommDestroy) comm_destroy = nullptr;
  decltype(&::ncclCommAbort) comm_abort = nullptr;
  decltype(&::ncclAllReduce) all_reduce = nullptr;
  decltype(&::ncclBroadcast) broadcast = nullptr;
  decltype(&::ncclAllGather) all_gather = nullptr;
  decltype(&::ncclReduceScatter) reduce_scatter = nullptr;
  decltype(&::ncclReduce) reduce = nullptr;
  decltype(&::ncclSend) send = nullptr;
  decltype(&::ncclRecv) recv = nullptr;
};

// dlopen's the first of `names` that loads; nullptr (and `tried` says why) when none does.
void* open_library(std::initializer_list<const char*> names, std::string* tried) {
  for (const char* name : names) {
    if (void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return handle;
    const char* why = dlerror();
    *tried += std::string(tried->empty() ? "" : "; ") + (why != nullptr ? why : name);
  }
  return nullptr;
}

// Resolves `name` in `library` into `function`; adds the name to `missing` when absent.
template <typename Function>
void resolve(void* library, const char* name, Function& function, std::string* missing) {
  function = reinterpret_cast<Function>(dlsym(library, name));
  if (function == nullptr) *missing += std::string(missing->empty() ? "" : ", ") + name;
}

CudaApi load_cuda_api() {
  CudaApi api;
  // The runtime of the CUDA major version whose headers this file was built with.
  const std::string cudart_name = "libcudart.so." + std::to_string(CUDART_VERSION / 1000);
  std::string tried;
  void* cudart = open_library({cudart_name.c_str(), "libcudart.so"}, &tried);
  if (cudart == nullptr) {
    api.error = "the CUDA runtime (" + cudart_name + ") could not be loaded (" + tried + "); install the CUDA " +
                std::to_string(CUDART_VERSION / 1000) +
                " runtime, or add its directory (e.g. /usr/local/cuda/lib64) to LD_LIBRARY_PATH";
    return api;
  }
  std::string missing;
  resolve(cudart, "cudaGetDeviceCount", api.get_device_count, &missing);
  resolve(cudart, "cudaGetDevice", api.get_device, &missing);
  resolve(cudart, "cudaSetDevice", api.set_device, &missing);
  resolve(cudart, "cudaGetErrorName", api.error_name, &missing);
  resolve(cudart, "cudaGetErrorString", api.error_string, &missing);
  resolve(cudart, "cudaGetLastError", api.get_last_error, &missing);
  resolve(cudart, "cudaStreamCreateWithFlags", api.stream_create, &missing);
  resolve(cudart, "cudaStreamDestroy", api.stream_destroy, &missing);
  resolve(cudart, "cudaStreamQuery", api.stream_query, &missing);
  resolve(cudart, "cudaMalloc", api.device_malloc, &missing);
  resolve(cudart, "cudaFree", api.device_free, &missing);
  resolve(cudart, "cudaPointerGetAttributes", api.pointer_attributes, &missing);
  if (!missing.empty()) {
    api.error = "the CUDA runtime " + cudart_name + " lacks " + missing + "; install the CUDA " +
                std::to_string(CUDART_VERSION / 1000) + " runtime";
    return api;
  }
  tried.clear();
  void* nccl = open_library({kNcclLibrary}, &tried);
  if (nccl == nullptr) {
    api.error = std::string("NCCL (") + kNcclLibrary + ") could not be loaded (" + tried +
                "); install NCCL 2.14 or newer (e.g. the libnccl2 package), or add its directory to LD_LIBRARY_PATH";
    return api;
  }
  resolve(nccl, "ncclGetVersion", api.nccl_version, &missing);
  resolve(nccl, "ncclGetErrorString", api.nccl_error_string, &missing);
  resolve(nccl, "ncclGetLastError", api.nccl_last_error, &missing);
  resolve(nccl, "ncclGetUniqueId", api.get_unique_id, &missing);
  resolve(nccl, "ncclCommInitRankConfig", api.comm_init_rank_config, &missing);
  resolve(nccl, "ncclCommGetAsyncError", api.comm_async_error, &missing);
  resolve(nccl, "ncclCommFinalize", api.comm_finalize, &missing);
  resolve(nccl, "ncclCommDestroy", api.comm_destroy, &missing);
  resolve(nccl, "ncclCommAbort", api.comm_abort, &missing);
  resolve(nccl, "ncclAllReduce", api.all_reduce, &missing);
  resolve(nccl, "ncclBroadcast", api.broadcast, &missing);
  resolve(nccl, "ncclAllGather", api.all_gather, &missing);
  resolve(nccl, "ncclReduceScatter", api.reduce_scatter, &missing);
  resolve(nccl, "ncclReduce", api.reduce, &missing);
  resolve(nccl, "ncclSend", api.send, &missing);
  resolve(nccl, "ncclRecv", api.recv, &missing);
  if (!missing.empty()) {
    api.error = std::string(kNcclLibrary) + " lacks " + missing + "; install NCCL 2.14 or newer";
    return api;
  }
  int version = 0;
  if (api.nccl_version(&version) != ncclSuccess || version < kMinNcclVersion) {
    api.error = "the NCCL found (" + std::string(kNcclLibrary) + ", version code " + std::to_string(version) +
                ") is too old: the NCCL backend needs NCCL 2.14 or newer";
  }
  return api;
}

// Loaded on first use; the libraries stay loaded for the life of the process.
const CudaApi& cuda_api() {
  static const CudaApi api = load_cuda_api();
  return api;
}

ncclDataType_t nccl_type(DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return ncclFloat32;
    case DataType::kFloat64:
      return ncclFloat64;
    case DataType::kFloat16:
      return ncclFloat16;
    case DataType::kBFloat16:
      return ncclBfloat16;
    case DataType::kInt32:
      return ncclInt32;
    case DataType::kInt64:
      return ncclInt64;
    case DataType::kUInt8:
      return ncclUint8;
  }
  throw CollectiveError("NCCL backend: unknown collective DataType " + std::to_string(static_cast<int>(type)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kProduct:
      return ncclProd;
  }
  throw CollectiveError("NCCL backend: unknown collective ReduceOp " + std::to_string(static_cast<int>(op)));
}

// Makes `device` current on the calling thread for the guard's life, then restores the
// thread's previous device (the caller's own CUDA work is left as it was).
class DeviceGuard {
 public:
  DeviceGuard(const CudaApi& api, int device) : api_(api) {
    if (api_.get_device(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ == device) return;
    cudaError_t err = api_.set_device(device);
    if (err != cudaSuccess)
      throw CollectiveError("cudaSetDevice(" + std::to_string(device) + ") failed: " + api_.error_name(err) + ": " +
                            api_.error_string(err));
    switch_back_ = true;
  }
  ~DeviceGuard() {
    if (switch_back_ && previous_ >= 0) api_.set_device(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  const CudaApi& api_;
  int previous_ = -1;
  bool switch_back_ = false;
};

class NcclBackend final : public Backend {
 public:
  explicit NcclBackend(const BackendContext& context)
      : api_(cuda_api()),
        group_(context.group),
        rank_(context.rank),
        world_(context.world_size),
        device_(context.cuda_device),
        op_timeout_(context.op_timeout),
        store_(context.store) {
    if (!api_.error.empty()) throw CollectiveError(where("join") + api_.error);
  }

  ~NcclBackend() override {
    ncclComm_t comm;
    bool healthy;
    {
      std::lock_guard<std::mutex> lock(mu_);
      comm = comm_;
      comm_ = nullptr;
      healthy = !failed_;
    }
    if (comm == nullptr && barrier_word_ == nullptr && stream_ == nullptr) return;
    try {
      DeviceGuard guard(api_, device_);
      if (comm != nullptr) {
        if (healthy && finalize(comm))
          api_.comm_destroy(comm);
        else
          api_.comm_abort(comm);
      }
      if (barrier_word_ != nullptr) api_.device_free(barrier_word_);
      if (stream_ != nullptr) api_.stream_destroy(stream_);
    } catch (const CollectiveError&) {
      // The device cannot be selected any more: leave the rest to process exit.
    }
  }

  // The rendezvous and NCCL's init; the destructor cleans up after a failure here.
  void connect() {
    if (world_ < 1 || rank_ < 0 || rank_ >= world_ || !store_)
      throw CollectiveError(where("join") + "bad rank " + std::to_string(rank_) + " of world size " +
                            std::to_string(world_) + (store_ ? "" : " or no store"));
    int devices = 0;
    cudaError_t err = api_.get_device_count(&devices);
    if (err != cudaSuccess || devices < 1)
      throw CollectiveError(where("join") + "no usable CUDA device: " +
                            (err != cudaSuccess ? "cudaGetDeviceCount failed: " + cuda_error(err)
                                                : std::string("the CUDA runtime sees no device")) +
                            ". The NCCL backend needs an NVIDIA GPU and its driver on this node (and the task must "
                            "request GPUs, so that gantry assigns one); for host buffers use "
                            "BackendKind::kSharedMemory or kGloo");
    if (device_ < 0 || device_ >= devices)
      throw CollectiveError(where("join") + "CUDA device " + std::to_string(device_) + " is not among the " +
                            std::to_string(devices) +
                            " device(s) this process sees (CUDA_VISIBLE_DEVICES narrows them to those gantry "
                            "assigned; the index counts among those)");
    DeviceGuard guard(api_, device_);

    ncclUniqueId id;
    if (rank_ == 0) {
      check_nccl("join", "ncclGetUniqueId", api_.get_unique_id(&id));
      store_->set(kUniqueIdKey, std::string(id.internal, sizeof(id.internal)));
    } else {
      std::string bytes;
      try {
        bytes = store_->get(kUniqueIdKey, op_timeout_);
      } catch (const CollectiveError& e) {
        throw CollectiveError(where("join") + "rank 0 did not publish NCCL's unique id: " + e.what());
      }
      if (bytes.size() != sizeof(id.internal))
        throw CollectiveError(where("join") + "NCCL's unique id in the store has " + std::to_string(bytes.size()) +
                              " bytes, not " + std::to_string(sizeof(id.internal)));
      std::memcpy(id.internal, bytes.data(), sizeof(id.internal));
    }

    check_cuda("join", "cudaStreamCreateWithFlags", api_.stream_create(&stream_, cudaStreamDefault));
    check_cuda("join", "cudaMalloc", api_.device_malloc(reinterpret_cast<void**>(&barrier_word_), sizeof(int)));

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // init and enqueues return at once: they can time out and be aborted
    ncclComm_t comm = nullptr;
    ncclResult_t result = api_.comm_init_rank_config(&comm, world_, id, rank_, &config);
    {
      std::lock_guard<std::mutex> lock(mu_);
      comm_ = comm;  // even after an error: a communicator NCCL made must be aborted
    }
    if (result != ncclSuccess && result != ncclInProgress)
      throw CollectiveError(fail(where("join") + "ncclCommInitRankConfig failed: " + nccl_error(result) +
                                 " (set NCCL_DEBUG=WARN for NCCL's own diagnostics)"));
    if (comm == nullptr) throw CollectiveError(fail(where("join") + "ncclCommInitRankConfig made no communicator"));
    wait_until_done("join", Clock::now() + op_timeout_, /*stream_too=*/false);
  }

  BackendKind kind() const override { return BackendKind::kNccl; }

  void allreduce(void* data, size_t count, DataType type, ReduceOp op) override {
    run("allreduce", count, {{"data", data}}, [&](ncclComm_t comm) {
      return api_.all_reduce(data, data, count, nccl_type(type), nccl_op(op), comm, stream_);
    });
  }

  void broadcast(void* data, size_t count, DataType type, int root) override {
    check_rank("broadcast", "root", root);
    run("broadcast", count, {{"data", data}},
        [&](ncclComm_t comm) { return api_.broadcast(data, data, count, nccl_type(type), root, comm, stream_); });
  }

  void allgather(const void* send, void* recv, size_t count, DataType type) override {
    run("allgather", count, {{"send", send}, {"recv", recv}},
        [&](ncclComm_t comm) { return api_.all_gather(send, recv, count, nccl_type(type), comm, stream_); });
  }

  void reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override {
    run("reduce_scatter", count, {{"send", send}, {"recv", recv}}, [&](ncclComm_t comm) {
      return api_.reduce_scatter(send, recv, count, nccl_type(type), nccl_op(op), comm, stream_);
    });
  }

  void reduce(void* data, size_t count, DataType type, ReduceOp op, int root) override {
    check_rank("reduce", "root", root);
    // NCCL writes the result only on the root: the others' `data` stays as it was.
    run("reduce", count, {{"data", data}}, [&](ncclComm_t comm) {
      return api_.reduce(data, data, count, nccl_type(type), nccl_op(op), root, comm, stream_);
    });
  }

  void barrier() override {
    run("barrier", 1, {}, [&](ncclComm_t comm) {
      return api_.all_reduce(barrier_word_, barrier_word_, 1, ncclInt32, ncclSum, comm, stream_);
    });
  }

  void send(const void* data, size_t count, DataType type, int to) override {
    check_rank("send", "destination", to);
    run("send", count, {{"data", data}},
        [&](ncclComm_t comm) { return api_.send(data, count, nccl_type(type), to, comm, stream_); });
  }

  void recv(void* data, size_t count, DataType type, int from) override {
    check_rank("recv", "source", from);
    run("recv", count, {{"data", data}},
        [&](ncclComm_t comm) { return api_.recv(data, count, nccl_type(type), from, comm, stream_); });
  }

  void abort(const std::string& why) override { fail(why); }

 private:
  struct NamedBuffer {
    const char* role;
    const void* pointer;
  };

  std::string where(const char* op) const {
    return "nccl group '" + group_ + "' rank " + std::to_string(rank_) + " of " + std::to_string(world_) +
           " (CUDA device " + std::to_string(device_) + "): " + op + ": ";
  }

  std::string cuda_error(cudaError_t err) const {
    return std::string(api_.error_name(err)) + " (" + api_.error_string(err) + ")";
  }

  std::string nccl_error(ncclResult_t result) const {
    std::string text = api_.nccl_error_string(result);
    // The comm argument is unused by NCCL: passing none keeps this safe during an abort.
    const char* detail = api_.nccl_last_error(nullptr);
    if (detail != nullptr && *detail != '\0') text += ": " + std::string(detail);
    return text;
  }

  void check_cuda(const char* op, const char* call, cudaError_t err) const {
    if (err != cudaSuccess) throw CollectiveError(where(op) + call + " failed: " + cuda_error(err));
  }

  void check_nccl(const char* op, const char* call, ncclResult_t result) const {
    if (result != ncclSuccess) throw CollectiveError(where(op) + call + " failed: " + nccl_error(result));
  }

  void check_rank(const char* op, const char* role, int peer) const {
    if (peer < 0 || peer >= world_)
      throw CollectiveError(where(op) + role + " rank " + std::to_string(peer) + " is not in 0.." +
                            std::to_string(world_ - 1));
  }

  // Refuses what NCCL cannot use: host memory, or memory of another device. Runs with the
  // rank's device current.
  void check_device_buffer(const char* op, const NamedBuffer& buffer) const {
    cudaPointerAttributes attributes{};
    cudaError_t err = api_.pointer_attributes(&attributes, buffer.pointer);
    if (err != cudaSuccess) api_.get_last_error();  // the query's error must not linger for the next call
    char address[32];
    std::snprintf(address, sizeof(address), "%p", buffer.pointer);
    if (err != cudaSuccess || attributes.type == cudaMemoryTypeUnregistered)
      throw CollectiveError(where(op) + "the " + buffer.role + " buffer (" + address +
                            ") is not CUDA memory: the NCCL backend needs device buffers (cudaMalloc'ed or managed); "
                            "use the shared-memory or Gloo backend for host buffers");
    if (attributes.type == cudaMemoryTypeDevice && attributes.device != device_)
      throw CollectiveError(where(op) + "the " + buffer.role + " buffer (" + address + ") is on CUDA device " +
                            std::to_string(attributes.device) + ", but this rank's communicator uses device " +
                            std::to_string(device_));
  }

  // Records the first failure and aborts the communicator (once); returns the reason later
  // ops throw. Thread-safe.
  std::string fail(const std::string& why) {
    ncclComm_t comm;
    std::string reason;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failed_) {
        failed_ = true;
        failure_ = why;
      }
      reason = failure_;
      comm = comm_;
      comm_ = nullptr;
    }
    // Outside mu_: nothing else can reach `comm` now, and the abort may take a moment.
    if (comm != nullptr) api_.comm_abort(comm);
    return reason;
  }

  // ncclCommFinalize, waiting until NCCL has flushed this rank's communication, at most
  // kFinalizeTimeout (or the op timeout, when shorter); false when it failed or timed out.
  bool finalize(ncclComm_t comm) {
    ncclResult_t result = api_.comm_finalize(comm);
    if (result != ncclSuccess && result != ncclInProgress) return false;
    const auto deadline = Clock::now() + std::min<std::chrono::milliseconds>(op_timeout_, kFinalizeTimeout);
    auto pause = kFirstPause;
    while (true) {
      ncclResult_t state = ncclSuccess;
      if (api_.comm_async_error(comm, &state) != ncclSuccess) return false;
      if (state == ncclSuccess) return true;
      if (state != ncclInProgress || Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, kLongestPause);
    }
  }

  // One op: argument checks, the enqueue under mu_, then the wait.
  template <typename Enqueue>
  void run(const char* op, size_t count, std::initializer_list<NamedBuffer> buffers, Enqueue&& enqueue) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (failed_) throw CollectiveError(failure_);
    }
    if (count == 0) return;
    DeviceGuard guard(api_, device_);
    for (const NamedBuffer& buffer : buffers) check_device_buffer(op, buffer);
    const auto deadline = Clock::now() + op_timeout_;
    ncclResult_t result;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (comm_ == nullptr) throw CollectiveError(failure_);
      result = enqueue(comm_);
    }
    if (result != ncclSuccess && result != ncclInProgress)
      throw CollectiveError(fail(where(op) + "NCCL refused the op: " + nccl_error(result)));
    wait_until_done(op, deadline, /*stream_too=*/true);
  }

  // Waits until NCCL finished enqueuing (the communicator's state leaves ncclInProgress)
  // and, when `stream_too`, the stream ran dry. On an abort, an NCCL or CUDA error or the
  // deadline, aborts the communicator and throws the reason.
  void wait_until_done(const char* op, Clock::time_point deadline, bool stream_too) {
    auto pause = kFirstPause;
    while (true) {
      ncclResult_t state = ncclSuccess;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (comm_ == nullptr) throw CollectiveError(failure_);
        ncclResult_t result = api_.comm_async_error(comm_, &state);
        if (result != ncclSuccess) state = result;
      }
      if (state != ncclSuccess && state != ncclInProgress)
        throw CollectiveError(
            fail(where(op) + "NCCL failed: " + nccl_error(state) +
                 (state == ncclRemoteError || state == ncclSystemError ? " (a peer rank or the network failed)" : "")));
      if (state == ncclSuccess) {
        if (!stream_too) return;
        cudaError_t err = api_.stream_query(stream_);
        if (err == cudaSuccess) return;
        if (err != cudaErrorNotReady)
          throw CollectiveError(fail(where(op) + "the device failed while running the op: " + cuda_error(err)));
      }
      if (Clock::now() >= deadline)
        throw CollectiveError(fail(where(op) + "did not complete within " + std::to_string(op_timeout_.count()) +
                                   " ms (the op timeout; a peer may have died or the ranks issued different ops); "
                                   "the NCCL communicator was aborted"));
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, kLongestPause);
    }
  }

  const CudaApi& api_;  // process-wide, not owned
  const std::string group_;
  const int rank_;
  const int world_;
  const int device_;
  const std::chrono::milliseconds op_timeout_;
  const std::shared_ptr<Store> store_;
  cudaStream_t stream_ = nullptr;  // set in connect(), used by the op thread only
  int* barrier_word_ = nullptr;    // one int in device memory, for barrier()

  std::mutex mu_;
  ncclComm_t comm_ = nullptr;  // guarded by mu_; null before init and once aborted
  bool failed_ = false;        // guarded by mu_
  std::string failure_;        // guarded by mu_: the first failure's reason
};

}  // namespace

bool is_cuda_device_pointer(const void* pointer) {
  if (pointer == nullptr) return false;
  // Once per process: without a runtime or a device, no pointer is a device pointer.
  static const bool have_devices = [] {
    const CudaApi& api = cuda_api();
    // Only the runtime matters here: a device buffer without NCCL must reach
    // make_nccl_backend's clear error, not a host backend reading device memory.
    if (api.get_device_count == nullptr || api.pointer_attributes == nullptr || api.get_last_error == nullptr)
      return false;
    int count = 0;
    bool ok = api.get_device_count(&count) == cudaSuccess && count > 0;
    if (!ok) api.get_last_error();  // clear the sticky error of a failed probe
    return ok;
  }();
  if (!have_devices) return false;
  const CudaApi& api = cuda_api();
  cudaPointerAttributes attributes{};
  if (api.pointer_attributes(&attributes, pointer) != cudaSuccess) {
    api.get_last_error();
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

std::unique_ptr<Backend> make_nccl_backend(const BackendContext& context) {
  auto backend = std::make_unique<NcclBackend>(context);
  backend->connect();
  return backend;
}

}  // namespace gantry::collective::detail
