#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gantry/collective.h"

namespace gantry::collective::detail {

/// Where ranks of one group meet: a key-value store scoped to the group (the head's KV
/// store in a cluster; `fake_store.h` in unit tests). Thread-safe.
class Store {
 public:
  virtual ~Store() = default;
  /// Sets `key` (overwriting).
  virtual void set(const std::string& key, const std::string& value) = 0;
  /// The value of `key`, blocking until it is set; throws CollectiveError after `timeout`.
  virtual std::string get(const std::string& key, std::chrono::milliseconds timeout) = 0;
  /// Adds `delta` to the counter at `key` (0 when absent) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
};

/// What a backend knows of its group when it is built.
struct BackendContext {
  std::string group;  ///< for messages
  int rank = 0;
  int world_size = 1;
  /// Scoped to this group (and this communicator instance): keys need no prefix.
  std::shared_ptr<Store> store;
  std::chrono::milliseconds op_timeout{std::chrono::minutes(10)};
  /// Per rank: the node it runs on (hex node id) and its host's address for TCP.
  std::vector<std::string> node_ids;
  std::vector<std::string> node_ips;
  /// The CUDA device the NCCL backend uses: an index among the devices this process sees.
  /// A worker's CUDA_VISIBLE_DEVICES already narrows them to those gantry assigned, so 0.
  int cuda_device = 0;
};

/// One transport's implementation of the collective ops. Ops run one at a time on the
/// communicator's op thread, in issue order, with the same sequence of calls on every
/// rank. `abort` is the only method called from another thread.
///
/// Buffer conventions match gantry/collective.h: allgather's `recv` holds world_size *
/// count elements; reduce_scatter's `send` holds world_size * count. `count` may be 0.
/// Every failure (a peer gone, the op timeout, an abort) throws CollectiveError.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendKind kind() const = 0;
  virtual void allreduce(void* data, size_t count, DataType type, ReduceOp op) = 0;
  virtual void broadcast(void* data, size_t count, DataType type, int root) = 0;
  virtual void allgather(const void* send, void* recv, size_t count, DataType type) = 0;
  virtual void reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) = 0;
  virtual void reduce(void* data, size_t count, DataType type, ReduceOp op, int root) = 0;
  virtual void barrier() = 0;
  virtual void send(const void* data, size_t count, DataType type, int to) = 0;
  virtual void recv(void* data, size_t count, DataType type, int from) = 0;
  /// Makes the op in progress (if any) and every later op throw CollectiveError with
  /// `why`, promptly, and lets the peers see it where the transport can. Thread-safe,
  /// idempotent.
  virtual void abort(const std::string& why) = 0;
};

/// Shared memory among ranks of one node (shm_backend.cc).
std::unique_ptr<Backend> make_shm_backend(const BackendContext& context);
/// Gloo over TCP (gloo_backend.cc).
std::unique_ptr<Backend> make_gloo_backend(const BackendContext& context);
/// gantry's own TCP connections between every pair of ranks, each authenticated with a
/// group secret shared through the store (tcp_backend.cc). Binds `context.node_ips[rank]`
/// (127.0.0.1 when absent); joining waits up to `context.op_timeout`.
std::unique_ptr<Backend> make_tcp_backend(const BackendContext& context);
/// Shared memory inside each node, Gloo among one leader per node
/// (hierarchical_backend.cc). Needs `context.node_ids`.
std::unique_ptr<Backend> make_hierarchical_backend(const BackendContext& context);
/// NCCL on CUDA device buffers, one device per rank (nccl_backend.cc; nccl_unavailable.cc
/// in builds without CUDA, where it throws). Loads libcudart and libnccl.so.2 with dlopen on
/// first use; without them, without a visible device, or on an NCCL error it throws
/// CollectiveError saying what is missing. Ops take device pointers only.
std::unique_ptr<Backend> make_nccl_backend(const BackendContext& context);
/// Whether `pointer` is CUDA device memory. False, at the cost of one check per process,
/// where no CUDA runtime or no device is present (and always in builds without CUDA).
bool is_cuda_device_pointer(const void* pointer);

}  // namespace gantry::collective::detail
