// The Gloo backend: collectives among the ranks of a group over Gloo's TCP transport
// (Debian's libgloo, a 2022-05 snapshot), one connection between every pair of ranks.
//
// Ranks meet through the group's Store (gloo's rendezvous keys, under "gloo/"). Allreduce,
// broadcast, allgather, reduce and barrier are gloo's own algorithms (allreduce: ring for
// large buffers, bcube below kRingMinBytes); reduce_scatter and send/recv are written here
// over gloo's unbound buffers. Half-precision types are reduced in a float32 scratch copy,
// so they accumulate in float32 and round once.
//
// Failure handling, the part gloo leaves to its user:
//   - When a connection breaks, gloo fails the ops still queued on it, but not a send
//     already in the pair's transmit queue nor a receive whose payload had begun to
//     arrive: their waits would sleep until the op timeout. So every buffer the algorithms
//     create goes through a registry (TrackingTransportContext; the tcp:: pair, context
//     and buffer headers cannot be included, Debian ships them without
//     gloo/common/memory.h), and once the group has failed the backend interrupts every
//     wait on them (abortWaitRecv/abortWaitSend), again and again while an op runs. gloo's
//     algorithms ignore an interrupted wait and run on, so each op checks the failure
//     state when it returns.
//   - A watchdog thread keeps a receive posted from every peer on a slot nobody sends to.
//     gloo fails it the moment any connection breaks, which tells the watchdog at once,
//     not at the op timeout. A peer that announced a clean leave (the "left/<rank>" key,
//     set by its destructor) is only noted; any other loss fails the group.
//   - Failing the group closes every connection through gloo's own path for an op
//     timeout, so the peers see the loss at once and fail in turn.
//   - gloo writes with writev(2): SIGPIPE is blocked on the threads that call into it.
//
// Concurrency: ops run on the communicator's op thread, one at a time; `abort` may come
// from any thread; the watchdog runs on its own thread. `mu_` guards the failure state,
// `watch_mu_` the watchdog's state, BufferRegistry its own set.

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/reduce.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/context.h>
#include <gloo/transport/tcp/attr.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_set>
#include <utility>

#include "collective/backend.h"
#include "collective/reduce_kernels.h"

namespace gantry::collective::detail {
namespace {

// Allreduce of at least this many bytes takes gloo's ring (bandwidth-optimal); smaller
// ones take bcube (log2(world) rounds instead of 2 * (world - 1)).
constexpr size_t kRingMinBytes = 256 * 1024;

// Slot prefixes of the ops written here; gloo's own algorithms use 0x01..0x08.
constexpr uint8_t kReduceScatterSlotPrefix = 0x20;
constexpr uint8_t kPointToPointSlotPrefix = 0x21;
constexpr uint8_t kSentinelSlotPrefix = 0x22;

// The watchdog's wait: "until a connection fails". A gloo wait that times out closes
// every connection of the context, so this must never pass (and stays far from
// overflowing steady_clock).
constexpr std::chrono::hours kForever{24 * 365 * 50};

// How long the watchdog asks the store whether a lost peer left cleanly.
constexpr std::chrono::milliseconds kLeftKeyWait{100};
// How often the watchdog interrupts the waits of an op in flight once the group failed.
constexpr std::chrono::milliseconds kInterruptPeriod{20};

uint64_t make_slot(uint8_t prefix, uint64_t sequence) {
  return static_cast<uint64_t>(prefix) << 56 | (sequence & ((uint64_t{1} << 56) - 1));
}

std::unique_ptr<uint8_t[]> scratch_bytes(size_t bytes) { return std::make_unique_for_overwrite<uint8_t[]>(bytes); }

// Calls f(T{}) with the C++ type of a type gloo can reduce natively.
template <typename F>
void with_native_type(DataType type, F&& f) {
  switch (type) {
    case DataType::kFloat32:
      return f(float{});
    case DataType::kFloat64:
      return f(double{});
    case DataType::kInt32:
      return f(int32_t{});
    case DataType::kInt64:
      return f(int64_t{});
    case DataType::kUInt8:
      return f(uint8_t{});
    case DataType::kFloat16:
    case DataType::kBFloat16:
      break;
  }
  throw CollectiveError(std::string("gloo backend: no native reduction for ") + to_string(type));
}

// gloo's element-wise reductions (c = a op b). kAvg reduces as a sum; the caller divides.
template <typename T>
gloo::AllreduceOptions::Func reduction_for(ReduceOp op) {
  using Fn = void (*)(void*, const void*, const void*, size_t);
  Fn fn = nullptr;
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      fn = &gloo::sum<T>;
      break;
    case ReduceOp::kProduct:
      fn = &gloo::product<T>;
      break;
    case ReduceOp::kMin:
      fn = &gloo::min<T>;
      break;
    case ReduceOp::kMax:
      fn = &gloo::max<T>;
      break;
  }
  return fn;
}

ReduceOp combine_op(ReduceOp op) { return op == ReduceOp::kAvg ? ReduceOp::kSum : op; }

// gloo's rendezvous store over the group's Store. get blocks until the key is set.
class RendezvousStore final : public gloo::rendezvous::Store {
 public:
  RendezvousStore(std::shared_ptr<detail::Store> store, std::string prefix, std::chrono::milliseconds timeout)
      : store_(std::move(store)), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    store_->set(prefix_ + key, std::string(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    std::string value = store_->get(prefix_ + key, timeout_);
    return std::vector<char>(value.begin(), value.end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const auto& key : keys) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      store_->get(prefix_ + key, std::max(left, std::chrono::milliseconds(0)));
    }
  }

 private:
  std::shared_ptr<detail::Store> store_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
};

// The live buffers of a context, so that a failed group can interrupt waits that gloo
// itself would not wake. Thread-safe.
class BufferRegistry {
 public:
  void add(gloo::transport::UnboundBuffer* buffer) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.insert(buffer);
  }
  void remove(gloo::transport::UnboundBuffer* buffer) {
    std::lock_guard<std::mutex> lock(mu_);
    live_.erase(buffer);
  }
  /// Makes the current or next waitRecv/waitSend of every live buffer return false.
  void interrupt_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* buffer : live_) {
      buffer->abortWaitRecv();
      buffer->abortWaitSend();
    }
  }

 private:
  std::mutex mu_;  // guards live_; a buffer leaves it before it is destroyed
  std::unordered_set<gloo::transport::UnboundBuffer*> live_;
};

// A TCP unbound buffer, registered for its lifetime. Everything goes to the TCP buffer,
// which is what the pairs see.
class TrackedBuffer final : public gloo::transport::UnboundBuffer {
 public:
  TrackedBuffer(std::unique_ptr<gloo::transport::UnboundBuffer> tcp, BufferRegistry* registry)
      : gloo::transport::UnboundBuffer(tcp->ptr, tcp->size), tcp_(std::move(tcp)), registry_(registry) {
    registry_->add(tcp_.get());
  }
  ~TrackedBuffer() override { registry_->remove(tcp_.get()); }

  bool waitRecv(int* rank, std::chrono::milliseconds timeout) override { return tcp_->waitRecv(rank, timeout); }
  bool waitSend(int* rank, std::chrono::milliseconds timeout) override { return tcp_->waitSend(rank, timeout); }
  void abortWaitRecv() override { tcp_->abortWaitRecv(); }
  void abortWaitSend() override { tcp_->abortWaitSend(); }
  void send(int dst, uint64_t slot, size_t offset, size_t nbytes) override { tcp_->send(dst, slot, offset, nbytes); }
  void recv(int src, uint64_t slot, size_t offset, size_t nbytes) override { tcp_->recv(src, slot, offset, nbytes); }
  void recv(std::vector<int> srcs, uint64_t slot, size_t offset, size_t nbytes) override {
    tcp_->recv(std::move(srcs), slot, offset, nbytes);
  }

 private:
  std::unique_ptr<gloo::transport::UnboundBuffer> tcp_;
  BufferRegistry* registry_;  // not owned; outlives every buffer (the backend owns both)
};

// Stands in for the TCP transport context inside gloo::Context, so that every buffer
// gloo's algorithms create is a TrackedBuffer. Pairs stay the TCP context's.
class TrackingTransportContext final : public gloo::transport::Context {
 public:
  TrackingTransportContext(std::shared_ptr<gloo::transport::Context> tcp, BufferRegistry* registry)
      : gloo::transport::Context(tcp->rank, tcp->size), tcp_(std::move(tcp)), registry_(registry) {}

  std::unique_ptr<gloo::transport::Pair>& getPair(int rank) override { return tcp_->getPair(rank); }
  std::unique_ptr<gloo::transport::Pair>& createPair(int rank) override { return tcp_->createPair(rank); }
  std::unique_ptr<gloo::transport::UnboundBuffer> createUnboundBuffer(void* ptr, size_t size) override {
    return std::make_unique<TrackedBuffer>(tcp_->createUnboundBuffer(ptr, size), registry_);
  }

 private:
  std::shared_ptr<gloo::transport::Context> tcp_;
  BufferRegistry* registry_;  // not owned
};

// gloo's rendezvous context, with access to the transport context it builds.
class GroupContext final : public gloo::rendezvous::Context {
 public:
  using gloo::rendezvous::Context::Context;

  /// After connectFullMesh: routes the buffers of every later op through `registry` and
  /// returns the TCP transport context itself (for buffers that must stay untracked).
  std::shared_ptr<gloo::transport::Context> track_buffers(BufferRegistry* registry) {
    auto tcp = transportContext_;
    transportContext_ = std::make_shared<TrackingTransportContext>(tcp, registry);
    return tcp;
  }
};

// gloo writes to its sockets with writev(2), so a write to a peer that reset its
// connection raises SIGPIPE, whose default action kills the process. Blocks SIGPIPE on
// this thread while it lives, then drops any raised meanwhile (the write saw EPIPE and
// gloo reports the loss); threads started meanwhile (gloo's event loop, the watchdog)
// inherit the blocked mask for good. The process's signal dispositions stay untouched.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &previous_);
  }
  ~SigpipeBlock() {
    if (sigismember(&previous_, SIGPIPE)) return;
    timespec no_wait{};
    while (sigtimedwait(&pipe_, nullptr, &no_wait) == SIGPIPE) {
    }
    pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t pipe_;
  sigset_t previous_;
};

// Thrown by the waits written here when the group failed and interrupted them.
struct Interrupted {};

class GlooBackend final : public Backend {
 public:
  explicit GlooBackend(const BackendContext& context)
      : group_(context.group),
        rank_(context.rank),
        world_(context.world_size),
        op_timeout_(context.op_timeout),
        store_(context.store) {
    if (world_ < 1 || rank_ < 0 || rank_ >= world_ || !store_)
      throw CollectiveError(where("join") + "bad rank " + std::to_string(rank_) + " of world size " +
                            std::to_string(world_) + (store_ ? "" : " or no store"));
    send_sequence_.assign(world_, 0);
    recv_sequence_.assign(world_, 0);
    SigpipeBlock no_sigpipe;
    std::string host = "127.0.0.1";
    if (static_cast<size_t>(rank_) < context.node_ips.size() && !context.node_ips[rank_].empty())
      host = context.node_ips[rank_];
    try {
      gloo::transport::tcp::attr attr;
      attr.hostname = host;
      auto device = gloo::transport::tcp::CreateDevice(attr);
      context_ = std::make_shared<GroupContext>(rank_, world_);
      // Also the pairs' connect timeout (gloo waits 5x this for a connection).
      context_->setTimeout(op_timeout_);
      RendezvousStore store(store_, kKeyPrefix, op_timeout_);
      context_->connectFullMesh(store, device);
      tcp_ = context_->track_buffers(&registry_);
      // Nobody leaves before everyone is connected: a rank that ran no op and left at once
      // would close pairs that slower peers are still setting up.
      store_->set("connected/" + std::to_string(rank_), "1");
      for (int r = 0; r < world_; ++r) store_->get("connected/" + std::to_string(r), op_timeout_);
    } catch (const CollectiveError& e) {
      throw CollectiveError(where("join") + "rendezvous at " + host + " failed: " + e.what());
    } catch (const std::exception& e) {
      throw CollectiveError(where("join") + "connecting from " + host + " failed: " + e.what());
    }
    if (world_ > 1) watchdog_ = std::thread([this] { watch_peers(); });
  }

  ~GlooBackend() override {
    if (!failed_.load()) {
      // Lets the peers' watchdogs tell this leave from a crash.
      try {
        store_->set(kKeyPrefix + left_key(rank_), "1");
      } catch (...) {
      }
    }
    {
      std::lock_guard<std::mutex> lock(watch_mu_);
      stopping_ = true;
      if (sentinel_ != nullptr) sentinel_->abortWaitRecv();
    }
    watch_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    // Members then go in reverse order: the context closes its connections (peers see a
    // clean close) before the registry goes.
  }

  BackendKind kind() const override { return BackendKind::kGloo; }

  void allreduce(void* data, size_t count, DataType type, ReduceOp op) override {
    run("allreduce", [&] {
      if (count == 0) return;
      if (is_half(type)) {
        std::vector<float> acc = widen(data, count, type);
        allreduce_typed<float>(acc.data(), count, op);
        if (op == ReduceOp::kAvg) divide(acc.data(), count, DataType::kFloat32, world_);
        narrow(acc.data(), data, count, type);
        return;
      }
      with_native_type(type, [&](auto t) { allreduce_typed<decltype(t)>(data, count, op); });
      if (op == ReduceOp::kAvg) divide(data, count, type, world_);
    });
  }

  void broadcast(void* data, size_t count, DataType type, int root) override {
    check_rank("broadcast", "root", root, true);
    run("broadcast", [&] {
      if (count == 0) return;
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(static_cast<uint8_t*>(data), count * element_size(type));
      opts.setRoot(root);
      opts.setTag(next_tag());
      opts.setTimeout(op_timeout_);
      gloo::broadcast(opts);
    });
  }

  void allgather(const void* send, void* recv, size_t count, DataType type) override {
    run("allgather", [&] {
      if (count == 0) return;
      const size_t bytes = count * element_size(type);
      auto* out = static_cast<uint8_t*>(recv);
      gloo::AllgatherOptions opts(context_);
      // gloo only reads the input; without one it gathers in place.
      if (send != out + rank_ * bytes) opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(send)), bytes);
      opts.setOutput(out, bytes * world_);
      opts.setTag(next_tag());
      opts.setTimeout(op_timeout_);
      gloo::allgather(opts);
    });
  }

  void reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override {
    run("reduce_scatter", [&] {
      if (count == 0) return;
      ring_reduce_scatter(send, recv, count, type, op);
    });
  }

  void reduce(void* data, size_t count, DataType type, ReduceOp op, int root) override {
    check_rank("reduce", "root", root, true);
    run("reduce", [&] {
      if (count == 0) return;
      if (is_half(type)) {
        // The float32 copy is scratch on every rank, so reduce it in place everywhere.
        std::vector<float> acc = widen(data, count, type);
        reduce_typed<float>(acc.data(), acc.data(), count, op, root);
        if (rank_ != root) return;
        if (op == ReduceOp::kAvg) divide(acc.data(), count, DataType::kFloat32, world_);
        narrow(acc.data(), data, count, type);
        return;
      }
      with_native_type(type, [&](auto t) {
        using T = decltype(t);
        // gloo's ring writes partial results into the output of every rank: give the
        // others a scratch output so that their data stays unchanged.
        std::unique_ptr<uint8_t[]> scratch;
        void* out = data;
        if (rank_ != root) {
          scratch = scratch_bytes(count * sizeof(T));
          out = scratch.get();
        }
        reduce_typed<T>(data, out, count, op, root);
      });
      if (rank_ == root && op == ReduceOp::kAvg) divide(data, count, type, world_);
    });
  }

  void barrier() override {
    run("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag());
      opts.setTimeout(op_timeout_);
      gloo::barrier(opts);
    });
  }

  // A rendezvous, like gloo's own: send returns once `to` has posted the matching recv
  // and the data is written. Messages between a pair match in order by a per-pair count.
  void send(const void* data, size_t count, DataType type, int to) override {
    check_rank("send", "destination", to, false);
    run("send", [&] {
      if (count == 0) return;
      auto buffer = context_->createUnboundBuffer(const_cast<void*>(data), count * element_size(type));
      buffer->send(to, make_slot(kPointToPointSlotPrefix, send_sequence_[to]++));
      wait_send(*buffer);
    });
  }

  void recv(void* data, size_t count, DataType type, int from) override {
    check_rank("recv", "source", from, false);
    run("recv", [&] {
      if (count == 0) return;
      auto buffer = context_->createUnboundBuffer(data, count * element_size(type));
      buffer->recv(from, make_slot(kPointToPointSlotPrefix, recv_sequence_[from]++));
      wait_recv(*buffer);
    });
  }

  void abort(const std::string& why) override {
    SigpipeBlock no_sigpipe;
    fail(why);
  }

 private:
  static constexpr const char* kKeyPrefix = "gloo/";
  static std::string left_key(int rank) { return "left/" + std::to_string(rank); }

  std::string where(const char* op) const {
    return "gloo group '" + group_ + "' rank " + std::to_string(rank_) + " of " + std::to_string(world_) + ": " + op +
           ": ";
  }

  uint32_t next_tag() { return next_tag_++; }

  void check_rank(const char* op, const char* what, int peer, bool self_ok) const {
    if (peer < 0 || peer >= world_ || (!self_ok && peer == rank_))
      throw CollectiveError(where(op) + "bad " + what + " rank " + std::to_string(peer));
  }

  // Runs one op: throws at once if the group failed, turns every gloo exception into a
  // CollectiveError (failing the group, so that peers learn at once), and checks again at
  // the end, as an interrupted wait lets gloo's algorithms run on to their end.
  template <typename Body>
  void run(const char* op, Body&& body) {
    throw_if_failed(op);
    SigpipeBlock no_sigpipe;
    in_flight_.store(true);
    struct Landing {
      std::atomic<bool>& flag;
      ~Landing() { flag.store(false); }
    } landing{in_flight_};
    bool interrupted = false;
    try {
      body();
    } catch (const Interrupted&) {
      interrupted = true;  // only a failed group interrupts waits: reported just below
    } catch (const std::exception& e) {
      std::string reason = e.what();
      std::string earlier = fail(reason);
      if (!earlier.empty())
        reason = earlier.find(reason) != std::string::npos ? earlier : earlier + " (gloo: " + reason + ")";
      throw CollectiveError(where(op) + reason);
    }
    throw_if_failed(op);
    if (interrupted) throw CollectiveError(where(op) + "a wait was interrupted");
  }

  void throw_if_failed(const char* op) {
    if (!failed_.load()) return;
    std::lock_guard<std::mutex> lock(mu_);
    throw CollectiveError(where(op) + failure_);
  }

  // Fails the group with `reason` unless it failed already: closes every connection (peers
  // see it at once) and interrupts every wait. Returns the earlier reason, or "" when this
  // call failed the group. Thread-safe.
  std::string fail(const std::string& reason) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (failed_.load()) return failure_;
      failure_ = reason;
      failed_.store(true);
    }
    close_connections();
    registry_.interrupt_all();
    watch_cv_.notify_all();
    return "";
  }

  // gloo's path for an op timeout: a wait that times out signals every pair of the
  // context, which fails the ops pending on them and closes the sockets. A 1 ms wait on a
  // buffer nobody sends to takes that path. (Context::closeConnections would close the
  // sockets without waking anything.)
  void close_connections() {
    char unused = 0;
    auto buffer = tcp_->createUnboundBuffer(&unused, 1);
    try {
      buffer->waitRecv(nullptr, std::chrono::milliseconds(1));
    } catch (const std::exception&) {
    }
  }

  void wait_recv(gloo::transport::UnboundBuffer& buffer) {
    if (!buffer.waitRecv(nullptr, op_timeout_)) throw Interrupted{};
  }
  void wait_send(gloo::transport::UnboundBuffer& buffer) {
    if (!buffer.waitSend(nullptr, op_timeout_)) throw Interrupted{};
  }

  template <typename T>
  void allreduce_typed(void* data, size_t count, ReduceOp op) {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(static_cast<T*>(data), count);
    opts.setAlgorithm(count * sizeof(T) >= kRingMinBytes ? gloo::AllreduceOptions::Algorithm::RING
                                                         : gloo::AllreduceOptions::Algorithm::BCUBE);
    opts.setReduceFunction(reduction_for<T>(op));
    opts.setTag(next_tag());
    opts.setTimeout(op_timeout_);
    gloo::allreduce(opts);
  }

  template <typename T>
  void reduce_typed(void* in, void* out, size_t count, ReduceOp op, int root) {
    gloo::ReduceOptions opts(context_);
    if (in != out) opts.setInput(static_cast<T*>(in), count);
    opts.setOutput(static_cast<T*>(out), count);
    opts.setRoot(root);
    opts.setReduceFunction(reduction_for<T>(op));
    opts.setTag(next_tag());
    opts.setTimeout(op_timeout_);
    gloo::reduce(opts);
  }

  // Ring reduce-scatter over unbound buffers (gloo has none for unbound buffers). Works on
  // a copy of `send` (float32 for the half types): in step s, rank r sends its partial
  // block r-s-1 to r+1 and adds the block r-s-2 from r-1 into its own; after world-1 steps
  // block r holds every rank's contribution. Each link carries (world-1)/world of the
  // buffer, as in gloo's ring allreduce, but a step's transfer and reduction do not
  // overlap (no segmenting), and the copy costs one pass over `send`.
  void ring_reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) {
    const DataType acc_type = is_half(type) ? DataType::kFloat32 : type;
    const size_t block_bytes = count * element_size(acc_type);
    std::vector<float> widened;
    std::unique_ptr<uint8_t[]> copy;
    uint8_t* acc = nullptr;
    if (is_half(type)) {
      widened = widen(send, count * world_, type);
      acc = reinterpret_cast<uint8_t*>(widened.data());
    } else {
      copy = scratch_bytes(block_bytes * world_);
      std::memcpy(copy.get(), send, block_bytes * world_);
      acc = copy.get();
    }
    if (world_ > 1) {
      auto incoming_bytes = scratch_bytes(block_bytes);
      auto outgoing = context_->createUnboundBuffer(acc, block_bytes * world_);
      auto incoming = context_->createUnboundBuffer(incoming_bytes.get(), block_bytes);
      const uint64_t slot = make_slot(kReduceScatterSlotPrefix, next_tag());
      const int right = (rank_ + 1) % world_;
      const int left = (rank_ + world_ - 1) % world_;
      for (int step = 0; step < world_ - 1; ++step) {
        const int send_block = ((rank_ - step - 1) % world_ + world_) % world_;
        const int recv_block = ((rank_ - step - 2) % world_ + world_) % world_;
        incoming->recv(left, slot, 0, block_bytes);
        outgoing->send(right, slot, send_block * block_bytes, block_bytes);
        wait_recv(*incoming);
        uint8_t* mine = acc + recv_block * block_bytes;
        reduce_pair(mine, mine, incoming_bytes.get(), count, acc_type, combine_op(op));
        wait_send(*outgoing);
      }
    }
    uint8_t* result = acc + rank_ * block_bytes;
    if (op == ReduceOp::kAvg) divide(result, count, acc_type, world_);
    if (is_half(type)) {
      narrow(reinterpret_cast<const float*>(result), recv, count, type);
    } else {
      std::memcpy(recv, result, block_bytes);
    }
  }

  // The watchdog thread. Keeps a receive posted from every live peer on a slot nobody sends
  // to; gloo fails it when any connection breaks. It then re-arms, and the peers whose
  // receive cannot be posted any more are the lost ones. Once every connection is gone, it
  // stays to interrupt the waits of ops in flight of a failed group until the backend closes.
  void watch_peers() {
    char unused = 0;
    std::set<int> lost;
    for (uint64_t generation = 0;; ++generation) {
      auto sentinel = tcp_->createUnboundBuffer(&unused, 1);
      std::vector<std::pair<int, std::string>> newly_lost;
      for (int peer = 0; peer < world_; ++peer) {
        if (peer == rank_ || lost.count(peer) != 0) continue;
        try {
          sentinel->recv(peer, make_slot(kSentinelSlotPrefix, generation));
        } catch (const std::exception& e) {
          lost.insert(peer);
          newly_lost.emplace_back(peer, e.what());
        }
      }
      for (const auto& [peer, why] : newly_lost) {
        if (!failed_.load() && !left_cleanly(peer))
          fail("lost the connection to rank " + std::to_string(peer) + ": " + why);
      }
      if (lost.size() + 1 == static_cast<size_t>(world_)) break;
      {
        std::lock_guard<std::mutex> lock(watch_mu_);
        if (stopping_) return;
        sentinel_ = sentinel.get();
      }
      bool stopped = false;
      try {
        stopped = !sentinel->waitRecv(nullptr, kForever);
      } catch (const std::exception&) {
        // A connection failed: the next round finds which.
      }
      {
        std::lock_guard<std::mutex> lock(watch_mu_);
        sentinel_ = nullptr;
        if (stopped || stopping_) return;
      }
    }
    std::unique_lock<std::mutex> lock(watch_mu_);
    while (!stopping_) {
      if (failed_.load() && in_flight_.load()) registry_.interrupt_all();
      watch_cv_.wait_for(lock, kInterruptPeriod);
    }
  }

  bool left_cleanly(int peer) {
    try {
      store_->get(kKeyPrefix + left_key(peer), kLeftKeyWait);
      return true;
    } catch (...) {
      return false;
    }
  }

  const std::string group_;
  const int rank_;
  const int world_;
  const std::chrono::milliseconds op_timeout_;
  std::shared_ptr<detail::Store> store_;

  // Declared before the context: the context's buffers unregister themselves on the way out.
  BufferRegistry registry_;
  std::shared_ptr<GroupContext> context_;
  std::shared_ptr<gloo::transport::Context> tcp_;  // context_'s TCP transport, untracked buffers

  // Op thread only.
  uint32_t next_tag_ = 0;
  std::vector<uint64_t> send_sequence_;  // per destination rank
  std::vector<uint64_t> recv_sequence_;  // per source rank

  std::mutex mu_;
  std::atomic<bool> failed_{false};     // set once, under mu_, with failure_
  std::string failure_;                 // guarded by mu_: the first failure's reason
  std::atomic<bool> in_flight_{false};  // an op is running on the op thread

  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool stopping_ = false;                               // guarded by watch_mu_
  gloo::transport::UnboundBuffer* sentinel_ = nullptr;  // guarded by watch_mu_; not owned
  std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Backend> make_gloo_backend(const BackendContext& context) {
  return std::make_unique<GlooBackend>(context);
}

}  // namespace gantry::collective::detail
