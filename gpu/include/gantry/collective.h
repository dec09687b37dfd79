#pragma once

/// gantry::collective: allreduce and friends among N processes of a cluster.
///
/// A communicator joins `world_size` processes (tasks, actors or drivers, on any nodes)
/// into a group. Ranks meet through the head's key-value store: no port or address to
/// pick. The backend is chosen per group (shared memory on one node, Gloo across nodes,
/// hierarchical for several ranks on each of several nodes, NCCL for CUDA buffers).
///
///     namespace col = gantry::collective;
///     auto comm = col::Communicator::join({.group = "run-7", .world_size = 4, .rank = r});
///     comm.allreduce(std::span<float>(grads), col::ReduceOp::kAvg);
///     col::Work w = comm.allreduce_async(data, n, col::DataType::kFloat32);
///     w.wait();

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "gantry/errors.h"

namespace gantry::collective {

/// How values of several ranks combine. kAvg divides the sum by the world size.
enum class ReduceOp { kSum, kAvg, kMin, kMax, kProduct };

/// Element types. Half-precision types (kFloat16, kBFloat16) are accumulated in float32.
enum class DataType { kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8 };

/// Bytes of one element of `type`.
size_t element_size(DataType type);
/// "float32", "bfloat16", ...
const char* to_string(DataType type);
const char* to_string(ReduceOp op);

/// Which transport a group uses.
enum class BackendKind {
  kAuto,          ///< shared memory on one node, else TCP (one rank per node) or hierarchical
  kSharedMemory,  ///< one /dev/shm segment mapped by every rank (one node only)
  /// libgloo's TCP transport between every pair of ranks. Its connections accept any
  /// peer (no token check): use it only on networks you trust.
  kGloo,
  kHierarchical,  ///< shared memory inside each node, TCP between one leader per node
  kNccl,          ///< NCCL, for buffers in CUDA device memory
  /// gantry's own TCP connections between every pair of ranks, each opened with a
  /// challenge-response on a secret only the group's members (token holders) can read.
  kTcp,
};
/// "shm", "gloo", "hierarchical", "nccl", "tcp" ("auto" for kAuto).
const char* to_string(BackendKind kind);

/// A collective operation failed: a member died, the group was aborted, an op timed out,
/// or the ranks disagreed (different world sizes, a rank joined twice). `what()` names
/// the group and, where known, the rank, its node and why.
class CollectiveError : public Error {
 public:
  using Error::Error;
};

/// The element type of a C++ arithmetic type, for the span overloads.
template <typename T>
constexpr DataType data_type_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return DataType::kFloat32;
  else if constexpr (std::is_same_v<U, double>) return DataType::kFloat64;
  else if constexpr (std::is_same_v<U, int32_t>) return DataType::kInt32;
  else if constexpr (std::is_same_v<U, int64_t>) return DataType::kInt64;
  else if constexpr (std::is_same_v<U, uint8_t>) return DataType::kUInt8;
  else static_assert(sizeof(T) == 0, "no collective DataType for this element type; pass a DataType");
}

namespace detail {
struct WorkState;
class CommunicatorImpl;
}  // namespace detail

/// The handle of an asynchronous operation (c10d's shape). Copies share one operation.
/// Ops issued on one communicator complete in the order they were issued.
class Work {
 public:
  Work() = default;
  /// Blocks until the op finished; rethrows its CollectiveError. Thread-safe.
  void wait() const;
  /// Whether the op has finished (successfully or not), without blocking.
  bool done() const;
  /// Whether it finished without error (false while it runs).
  bool succeeded() const;

 private:
  friend class detail::CommunicatorImpl;
  explicit Work(std::shared_ptr<detail::WorkState> state) : state_(std::move(state)) {}
  std::shared_ptr<detail::WorkState> state_;
};

/// What `Communicator::join` needs.
struct JoinOptions {
  /// The group's name, unique among the job's live groups (or cluster-wide for drivers
  /// of different jobs joining one group: see `cluster_namespace`).
  std::string group;
  int world_size = 1;
  /// This process's rank, 0..world_size-1.
  int rank = 0;
  BackendKind backend = BackendKind::kAuto;
  /// How long `join` waits for every rank to arrive.
  std::chrono::milliseconds join_timeout = std::chrono::minutes(5);
  /// How long one operation may take before it fails with CollectiveError.
  std::chrono::milliseconds op_timeout = std::chrono::minutes(10);
  /// Meet in the cluster's key namespace instead of the job's (ranks from several jobs).
  bool cluster_namespace = false;
};

/// One process's membership of a group. Move-only; destroying it leaves the group.
/// Ops are thread-safe and queue in issue order on the communicator's own thread.
class Communicator {
 public:
  /// Joins the group, blocking until all `world_size` ranks have joined. Throws
  /// CollectiveError when a rank is joined twice, the world sizes differ, the chosen
  /// backend cannot serve the group, or `join_timeout` passes.
  static Communicator join(const JoinOptions& options);

  Communicator(Communicator&&) noexcept;
  Communicator& operator=(Communicator&&) noexcept;
  ~Communicator();

  int rank() const;
  int world_size() const;
  const std::string& group() const;
  BackendKind backend() const;

  /// Every rank's `data` becomes the reduction of all ranks' `data`.
  void allreduce(void* data, size_t count, DataType type, ReduceOp op = ReduceOp::kSum);
  template <typename T>
  void allreduce(std::span<T> data, ReduceOp op = ReduceOp::kSum) {
    allreduce(data.data(), data.size(), data_type_of<T>(), op);
  }
  Work allreduce_async(void* data, size_t count, DataType type, ReduceOp op = ReduceOp::kSum);

  /// Every rank's `data` becomes `root`'s.
  void broadcast(void* data, size_t count, DataType type, int root);
  Work broadcast_async(void* data, size_t count, DataType type, int root);

  /// `recv` (world_size * count elements) gets every rank's `send` (count elements), in
  /// rank order.
  void allgather(const void* send, void* recv, size_t count, DataType type);
  Work allgather_async(const void* send, void* recv, size_t count, DataType type);

  /// `send` holds world_size * count elements; rank r's `recv` (count elements) gets the
  /// reduction of every rank's r-th block.
  void reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op = ReduceOp::kSum);
  Work reduce_scatter_async(const void* send, void* recv, size_t count, DataType type, ReduceOp op = ReduceOp::kSum);

  /// `root`'s `data` becomes the reduction of all ranks' `data`; other ranks' are unchanged.
  void reduce(void* data, size_t count, DataType type, ReduceOp op, int root);
  Work reduce_async(void* data, size_t count, DataType type, ReduceOp op, int root);

  /// Returns once every rank has called it.
  void barrier();
  Work barrier_async();

  /// Point to point: `send` to rank `to` is matched by `recv` from this rank there, in
  /// order. A send may complete only once its peer has posted the matching recv (Gloo's
  /// and NCCL's rule), and ops of one communicator run in issue order, so two ranks that
  /// both send to each other first can wait on each other forever: order the calls (even
  /// ranks send first, odd ranks receive first), as with MPI's blocking sends.
  void send(const void* data, size_t count, DataType type, int to);
  void recv(void* data, size_t count, DataType type, int from);
  Work send_async(const void* data, size_t count, DataType type, int to);
  Work recv_async(void* data, size_t count, DataType type, int from);

  /// Fails every pending and later op of this member with CollectiveError (the others
  /// fail too, as this member leaves). Thread-safe; idempotent.
  void abort(const std::string& why = "aborted by Communicator::abort");

 private:
  explicit Communicator(std::unique_ptr<detail::CommunicatorImpl> impl);
  std::unique_ptr<detail::CommunicatorImpl> impl_;
};

}  // namespace gantry::collective
