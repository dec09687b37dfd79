// Communicator: joins ranks through the key-value store, picks a backend, runs ops in
// issue order on one thread, and fails the group promptly when a member goes away.
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <cstdio>

#include "collective/backend.h"
#include "collective/kv_store.h"
#include "gantry/collective.h"
#include "gantry/gantry.h"

namespace gantry::collective {
namespace detail {

struct WorkState {
  std::mutex mu;  // guards done, error
  std::condition_variable cv;
  bool done = false;
  std::string error;  // empty: succeeded
  std::function<void(Backend&)> run;
  std::string what;  // "allreduce of 1024 float32", for errors

  void finish(std::string why) {
    std::lock_guard<std::mutex> lock(mu);
    if (done) return;
    done = true;
    error = std::move(why);
    cv.notify_all();
  }
};

namespace {

// What each rank publishes about itself when it joins.
struct Member {
  int world_size = 0;
  int pid = 0;
  std::string node_id;
  std::string node_ip;
  std::string worker_id;
  std::string nonce;  // rank 0's names this incarnation of the group
};

std::string encode_member(const Member& m) {
  std::ostringstream out;
  out << m.world_size << '\n' << m.pid << '\n' << m.node_id << '\n' << m.node_ip << '\n' << m.worker_id << '\n'
      << m.nonce << '\n';
  return out.str();
}

Member decode_member(const std::string& text, const std::string& group, int rank) {
  std::istringstream in(text);
  Member m;
  std::string ws, pid;
  if (!std::getline(in, ws) || !std::getline(in, pid) || !std::getline(in, m.node_id) ||
      !std::getline(in, m.node_ip) || !std::getline(in, m.worker_id) || !std::getline(in, m.nonce))
    throw CollectiveError("group '" + group + "': the record of rank " + std::to_string(rank) +
                          " in the key-value store is malformed");
  try {
    m.world_size = std::stoi(ws);
    m.pid = std::stoi(pid);
  } catch (const std::exception&) {
    throw CollectiveError("group '" + group + "': the record of rank " + std::to_string(rank) +
                          " in the key-value store is malformed");
  }
  return m;
}

std::string random_hex(size_t bytes) {
  std::random_device rd;
  std::string out;
  const char* digits = "0123456789abcdef";
  for (size_t i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xff;
    out += digits[v >> 4];
    out += digits[v & 15];
  }
  return out;
}

}  // namespace

/// How long an abort waits for the op in progress to leave its interrupted transport.
constexpr auto kLetGo = std::chrono::seconds(3);

/// The state behind a Communicator. The op thread runs queued ops in order; the monitor
/// thread watches the group's abort key and its members' nodes.
class CommunicatorImpl {
 public:
  CommunicatorImpl(JoinOptions options, std::vector<Member> members, std::string prefix, std::string instance)
      : options_(std::move(options)), members_(std::move(members)), prefix_(std::move(prefix)),
        instance_(std::move(instance)) {}

  ~CommunicatorImpl() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      cv_.notify_all();
    }
    if (monitor_.joinable()) monitor_.join();
    std::unique_lock<std::mutex> lock(mu_);
    // An op stuck in a transport that cannot be interrupted keeps its thread: leave it
    // behind (it holds the backend through a shared_ptr) rather than hang here.
    bool stuck = running_ && aborted_;
    lock.unlock();
    if (op_thread_.joinable()) {
      if (stuck) op_thread_.detach();
      else op_thread_.join();
    }
    leave();
  }

  void start(std::shared_ptr<Backend> backend) {
    backend_ = std::move(backend);
    op_thread_ = std::thread([this, backend = backend_] { op_loop(backend); });
    monitor_ = std::thread([this] { monitor_loop(); });
  }

  Work submit(std::string what, std::function<void(Backend&)> run) {
    auto state = std::make_shared<WorkState>();
    state->what = std::move(what);
    state->run = std::move(run);
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) {
      state->finish(failure(state->what, abort_reason_));
    } else {
      queue_.push_back(state);
      cv_.notify_all();
    }
    return Work(state);
  }

  void abort(const std::string& why, bool tell_peers) {
    std::vector<std::shared_ptr<WorkState>> failed;
    std::shared_ptr<Backend> backend, device;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (aborted_) return;
      aborted_ = true;
      abort_reason_ = why;
      // Ops not started yet fail now; the one in progress fails when the interrupted
      // transport lets go of the caller's buffers (below).
      failed.assign(queue_.begin(), queue_.end());
      queue_.clear();
      backend = backend_;
      device = device_shared_;
      cv_.notify_all();
    }
    for (auto& w : failed) w->finish(failure(w->what, why));
    if (backend) backend->abort(why);
    if (device) device->abort(why);
    if (tell_peers) {
      try {
        kv::put(instance_ + "abort", why, {.overwrite = false, .cluster = options_.cluster_namespace});
      } catch (const std::exception&) {
        // the head is gone too: the peers' own checks find out
      }
    }
    std::shared_ptr<WorkState> stuck;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, kLetGo, [&] { return !running_; })) stuck = current_;
    }
    // A transport that did not let go within kLetGo: its op fails anyway, so no caller
    // waits on it for ever (its buffers may still be read until the op timeout).
    if (stuck) stuck->finish(failure(stuck->what, why));
  }

  const JoinOptions& options() const { return options_; }
  BackendKind kind() const { return backend_->kind(); }

  void set_device_context(BackendContext context) { device_context_ = std::move(context); }
  /// The backend for CUDA device buffers: the group's own when it is NCCL, else an NCCL
  /// group made on the first op with device buffers (every rank reaches it at the same op,
  /// as ops run in the same order everywhere). Op thread only.
  Backend& device_backend(Backend& host) {
    if (host.kind() == BackendKind::kNccl) return host;
    if (!device_) {
      device_ = make_nccl_backend(device_context_);
      std::lock_guard<std::mutex> lock(mu_);
      device_shared_ = device_;
    }
    return *device_;
  }

 private:
  std::string failure(const std::string& what, const std::string& why) const {
    return "group '" + options_.group + "' rank " + std::to_string(options_.rank) + ": " + what + " failed: " + why;
  }

  void op_loop(std::shared_ptr<Backend> backend) {
    while (true) {
      std::shared_ptr<WorkState> work;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || aborted_ || !queue_.empty(); });
        if (aborted_ || (stopping_ && queue_.empty())) return;
        work = queue_.front();
        queue_.pop_front();
        current_ = work;
        running_ = true;
      }
      std::string error;
      try {
        work->run(*backend);
      } catch (const std::exception& e) {
        error = e.what();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        current_.reset();
        running_ = false;
        cv_.notify_all();
      }
      if (error.empty()) {
        work->finish({});
      } else {
        work->finish(failure(work->what, error));
        // The group cannot go on: its members may be mid-op. Tell them.
        abort(error, /*tell_peers=*/true);
        return;
      }
    }
  }

  // Wakes when any rank posts the group's abort key; while an op runs, also checks that
  // every member's node is alive (a dead node closes no sockets).
  void monitor_loop() {
    const std::string key = instance_ + "abort";
    std::set<std::string> member_nodes;
    for (const Member& m : members_) member_nodes.insert(m.node_id);
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_ || aborted_) return;
      }
      std::optional<std::string> why;
      try {
        why = kv::wait(key, std::chrono::milliseconds(500), {.cluster = options_.cluster_namespace});
      } catch (const std::exception& e) {
        why = std::string("the head cannot be reached: ") + e.what();
      }
      if (why) {
        abort(*why, /*tell_peers=*/false);
        return;
      }
      bool busy;
      {
        std::lock_guard<std::mutex> lock(mu_);
        busy = running_ || !queue_.empty();
      }
      if (!busy || member_nodes.size() <= 1) continue;
      try {
        for (const NodeInfo& node : gantry::nodes()) {
          if (node.alive || !member_nodes.count(node.node_id)) continue;
          for (size_t r = 0; r < members_.size(); ++r)
            if (members_[r].node_id == node.node_id) {
              abort("rank " + std::to_string(r) + " (pid " + std::to_string(members_[r].pid) + ") is on node " +
                        node.node_id.substr(0, 8) + ", which the cluster declared dead",
                    /*tell_peers=*/true);
              return;
            }
        }
      } catch (const std::exception&) {
      }
    }
  }

  // The last rank to leave removes the group's keys, so the name can be joined again.
  void leave() {
    try {
      kv::Scope scope{.cluster = options_.cluster_namespace};
      if (kv::add(prefix_ + "left", 1, scope) < options_.world_size) return;
      for (const std::string& key : kv::keys(prefix_, scope)) kv::del(key, scope);
    } catch (const std::exception&) {
      // shutdown already ran, or the head is gone: the job's keys go with the job
    }
  }

  JoinOptions options_;
  std::vector<Member> members_;
  std::string prefix_;    // the group's keys
  std::string instance_;  // this incarnation's keys (under prefix_)
  std::shared_ptr<Backend> backend_;
  BackendContext device_context_;
  std::shared_ptr<Backend> device_;         // op thread only
  std::shared_ptr<Backend> device_shared_;  // the same, for abort (guarded by mu_)
  std::thread op_thread_;
  std::thread monitor_;

  std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::deque<std::shared_ptr<WorkState>> queue_;
  std::shared_ptr<WorkState> current_;
  bool running_ = false;
  bool stopping_ = false;
  bool aborted_ = false;
  std::string abort_reason_;
};

}  // namespace detail

using detail::CommunicatorImpl;
using detail::Member;
using detail::decode_member;
using detail::encode_member;
using detail::random_hex;

void Work::wait() const {
  if (!state_) throw CollectiveError("wait on an empty collective::Work");
  std::unique_lock<std::mutex> lock(state_->mu);
  // Most ops finish within moments. One that does not is waiting for its peers: the rank
  // then lends its CPUs (telling the agent costs two calls, too much for every op), so
  // peers queued for them can start.
  if (!state_->cv.wait_for(lock, std::chrono::milliseconds(5), [&] { return state_->done; })) {
    lock.unlock();
    BlockedScope waiting;
    lock.lock();
    state_->cv.wait(lock, [&] { return state_->done; });
  }
  if (!state_->error.empty()) throw CollectiveError(state_->error);
}

bool Work::done() const {
  if (!state_) return true;
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->done;
}

bool Work::succeeded() const {
  if (!state_) return false;
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->done && state_->error.empty();
}

namespace {

std::string where(const JoinOptions& o) { return "group '" + o.group + "' rank " + std::to_string(o.rank); }

BackendKind choose_backend(const JoinOptions& o, const std::vector<Member>& members) {
  std::map<std::string, int> per_node;
  for (const Member& m : members) ++per_node[m.node_id];
  bool one_node = per_node.size() == 1;
  bool shared_nodes = false;
  for (const auto& [node, ranks] : per_node) shared_nodes |= ranks > 1;
  if (o.backend == BackendKind::kAuto) {
    if (one_node) return BackendKind::kSharedMemory;
    return shared_nodes ? BackendKind::kHierarchical : BackendKind::kTcp;
  }
  if (o.backend == BackendKind::kSharedMemory && !one_node)
    throw CollectiveError(where(o) + ": the shared-memory backend needs every rank on one node, but the group spans " +
                          std::to_string(per_node.size()) + " nodes; use BackendKind::kGloo or kAuto");
  return o.backend;
}

}  // namespace

Communicator Communicator::join(const JoinOptions& o) {
  if (o.group.empty()) throw CollectiveError("Communicator::join: the group needs a name");
  if (o.group.find('/') != std::string::npos)
    throw CollectiveError("Communicator::join: a group name must not contain '/' (got '" + o.group + "')");
  if (o.world_size < 1)
    throw CollectiveError("Communicator::join: group '" + o.group + "' world_size must be at least 1, not " +
                          std::to_string(o.world_size));
  if (o.rank < 0 || o.rank >= o.world_size)
    throw CollectiveError("Communicator::join: group '" + o.group + "' rank must be in 0.." +
                          std::to_string(o.world_size - 1) + ", not " + std::to_string(o.rank));
  if (!is_initialized()) throw CollectiveError("Communicator::join needs gantry::init() first");
  RuntimeContext here = runtime_context();
  BlockedScope waiting;  // for the other ranks: a task here lends its CPUs meanwhile
  kv::Scope scope{.cluster = o.cluster_namespace};
  const std::string prefix = "gantry/collective/" + o.group + "/";
  auto deadline = std::chrono::steady_clock::now() + o.join_timeout;

  std::string ws = std::to_string(o.world_size);
  if (!kv::put(prefix + "world_size", ws, {.overwrite = false, .cluster = o.cluster_namespace})) {
    auto existing = kv::get(prefix + "world_size", scope);
    if (existing && *existing != ws)
      throw CollectiveError(where(o) + " joined with world_size " + ws + ", but the group's other ranks use " +
                            *existing);
  }
  Member me{o.world_size, here.pid, here.node_id, here.node_ip, here.worker_id, random_hex(8)};
  const std::string my_key = prefix + "member/" + std::to_string(o.rank);
  if (!kv::put(my_key, encode_member(me), {.overwrite = false, .cluster = o.cluster_namespace})) {
    std::string holder = "another process";
    if (auto existing = kv::get(my_key, scope)) {
      try {
        Member other = decode_member(*existing, o.group, o.rank);
        holder = "pid " + std::to_string(other.pid) + " on node " + other.node_id.substr(0, 8);
      } catch (const CollectiveError&) {
      }
    }
    throw CollectiveError(where(o) + " was joined twice: " + holder +
                          " holds that rank already (destroy its Communicator first, or use a new group name)");
  }
  std::vector<Member> members(static_cast<size_t>(o.world_size));
  for (int r = 0; r < o.world_size; ++r) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    auto text = kv::wait(prefix + "member/" + std::to_string(r), std::max(left, std::chrono::milliseconds(1)), scope);
    if (!text) {
      std::string missing;
      for (int q = r; q < o.world_size; ++q)
        if (!kv::get(prefix + "member/" + std::to_string(q), scope)) missing += (missing.empty() ? "" : ", ") + std::to_string(q);
      kv::del(my_key, scope);
      throw CollectiveError(where(o) + ": ranks " + missing + " did not join within " +
                            std::to_string(o.join_timeout.count()) + " ms");
    }
    members[static_cast<size_t>(r)] = decode_member(*text, o.group, r);
    if (members[static_cast<size_t>(r)].world_size != o.world_size)
      throw CollectiveError(where(o) + " joined with world_size " + ws + ", but rank " + std::to_string(r) +
                            " joined with " + std::to_string(members[static_cast<size_t>(r)].world_size));
  }
  BackendKind kind = choose_backend(o, members);
  bool spans_nodes = false;
  for (const Member& m : members) spans_nodes |= m.node_id != members[0].node_id;
  if (spans_nodes && here.tls && kind != BackendKind::kNccl) {
    static std::once_flag told;
    std::call_once(told, [&] {
      std::fprintf(stderr,
                   "gantry::collective: group '%s' spans nodes; its data travels between them over %s, not "
                   "encrypted: the cluster's TLS covers gantry's gRPC endpoints only\n",
                   o.group.c_str(),
                   kind == BackendKind::kGloo ? "Gloo's TCP connections, which are not authenticated either"
                                              : "gantry's TCP connections, authenticated with the group's secret but");
    });
  }
  const std::string instance = prefix + members[0].nonce + "/";
  detail::BackendContext context;
  context.group = o.group;
  context.rank = o.rank;
  context.world_size = o.world_size;
  context.store = std::make_shared<detail::KvStore>(instance + std::string(to_string(kind)) + "/", o.cluster_namespace);
  context.op_timeout = o.op_timeout;
  for (const Member& m : members) {
    context.node_ids.push_back(m.node_id);
    context.node_ips.push_back(m.node_ip);
  }
  auto impl = std::make_unique<CommunicatorImpl>(o, members, prefix, instance);
  {
    detail::BackendContext device = context;
    device.store = std::make_shared<detail::KvStore>(instance + "nccl/", o.cluster_namespace);
    impl->set_device_context(std::move(device));
  }
  std::shared_ptr<detail::Backend> backend;
  switch (kind) {
    case BackendKind::kSharedMemory:
      backend = detail::make_shm_backend(context);
      break;
    case BackendKind::kGloo:
      backend = detail::make_gloo_backend(context);
      break;
    case BackendKind::kTcp:
      backend = detail::make_tcp_backend(context);
      break;
    case BackendKind::kHierarchical:
      backend = detail::make_hierarchical_backend(context);
      break;
    case BackendKind::kNccl:
      backend = detail::make_nccl_backend(context);
      break;
    default:
      throw CollectiveError(where(o) + ": no backend for " + to_string(kind));
  }
  impl->start(std::move(backend));
  return Communicator(std::move(impl));
}

Communicator::Communicator(std::unique_ptr<detail::CommunicatorImpl> impl) : impl_(std::move(impl)) {}
Communicator::Communicator(Communicator&&) noexcept = default;
Communicator& Communicator::operator=(Communicator&&) noexcept = default;
Communicator::~Communicator() = default;

namespace {
detail::CommunicatorImpl& live(const std::unique_ptr<detail::CommunicatorImpl>& impl) {
  if (!impl) throw CollectiveError("use of a moved-from collective::Communicator");
  return *impl;
}

std::string describe(const char* op, size_t count, DataType type) {
  return std::string(op) + " of " + std::to_string(count) + " " + to_string(type);
}

// Whether an op's buffers are CUDA device memory; mixing host and device is an error.
bool on_device(const void* a, const void* b = nullptr) {
  bool da = detail::is_cuda_device_pointer(a);
  if (b != nullptr && detail::is_cuda_device_pointer(b) != da)
    throw CollectiveError("an op's send and receive buffers must both be in host memory or both on the device");
  return da;
}

// The backend for an op: the group's own for host buffers, NCCL for device buffers.
detail::Backend& pick(detail::CommunicatorImpl& impl, detail::Backend& host, bool device) {
  return device ? impl.device_backend(host) : host;
}

void check_rank(const detail::CommunicatorImpl& impl, int r, const char* role) {
  if (r < 0 || r >= impl.options().world_size)
    throw CollectiveError(where(impl.options()) + ": " + role + " rank " + std::to_string(r) + " is not in 0.." +
                          std::to_string(impl.options().world_size - 1));
}
}  // namespace

int Communicator::rank() const { return live(impl_).options().rank; }
int Communicator::world_size() const { return live(impl_).options().world_size; }
const std::string& Communicator::group() const { return live(impl_).options().group; }
BackendKind Communicator::backend() const { return live(impl_).kind(); }

Work Communicator::allreduce_async(void* data, size_t count, DataType type, ReduceOp op) {
  auto& impl = live(impl_);
  bool device = on_device(data);
  return impl.submit(describe("allreduce", count, type),
                     [=, &impl](detail::Backend& b) { pick(impl, b, device).allreduce(data, count, type, op); });
}
void Communicator::allreduce(void* data, size_t count, DataType type, ReduceOp op) {
  allreduce_async(data, count, type, op).wait();
}

Work Communicator::broadcast_async(void* data, size_t count, DataType type, int root) {
  check_rank(live(impl_), root, "broadcast root");
  auto& impl = live(impl_);
  bool device = on_device(data);
  return impl.submit(describe("broadcast", count, type),
                     [=, &impl](detail::Backend& b) { pick(impl, b, device).broadcast(data, count, type, root); });
}
void Communicator::broadcast(void* data, size_t count, DataType type, int root) {
  broadcast_async(data, count, type, root).wait();
}

Work Communicator::allgather_async(const void* send, void* recv, size_t count, DataType type) {
  auto& impl = live(impl_);
  bool device = on_device(send, recv);
  return impl.submit(describe("allgather", count, type),
                     [=, &impl](detail::Backend& b) { pick(impl, b, device).allgather(send, recv, count, type); });
}
void Communicator::allgather(const void* send, void* recv, size_t count, DataType type) {
  allgather_async(send, recv, count, type).wait();
}

Work Communicator::reduce_scatter_async(const void* send, void* recv, size_t count, DataType type, ReduceOp op) {
  auto& impl = live(impl_);
  bool device = on_device(send, recv);
  return impl.submit(describe("reduce_scatter", count, type), [=, &impl](detail::Backend& b) {
    pick(impl, b, device).reduce_scatter(send, recv, count, type, op);
  });
}
void Communicator::reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) {
  reduce_scatter_async(send, recv, count, type, op).wait();
}

Work Communicator::reduce_async(void* data, size_t count, DataType type, ReduceOp op, int root) {
  check_rank(live(impl_), root, "reduce root");
  auto& impl = live(impl_);
  bool device = on_device(data);
  return impl.submit(describe("reduce", count, type),
                     [=, &impl](detail::Backend& b) { pick(impl, b, device).reduce(data, count, type, op, root); });
}
void Communicator::reduce(void* data, size_t count, DataType type, ReduceOp op, int root) {
  reduce_async(data, count, type, op, root).wait();
}

Work Communicator::barrier_async() {
  return live(impl_).submit("barrier", [](detail::Backend& b) { b.barrier(); });
}
void Communicator::barrier() { barrier_async().wait(); }

Work Communicator::send_async(const void* data, size_t count, DataType type, int to) {
  check_rank(live(impl_), to, "send destination");
  if (to == rank()) throw CollectiveError(where(impl_->options()) + ": cannot send to itself");
  auto& impl = live(impl_);
  bool device = on_device(data);
  return impl.submit(describe("send", count, type) + " to rank " + std::to_string(to),
                     [=, &impl](detail::Backend& b) { pick(impl, b, device).send(data, count, type, to); });
}
void Communicator::send(const void* data, size_t count, DataType type, int to) {
  send_async(data, count, type, to).wait();
}

Work Communicator::recv_async(void* data, size_t count, DataType type, int from) {
  check_rank(live(impl_), from, "recv source");
  if (from == rank()) throw CollectiveError(where(impl_->options()) + ": cannot receive from itself");
  auto& impl = live(impl_);
  bool device = on_device(data);
  return impl.submit(describe("recv", count, type) + " from rank " + std::to_string(from),
                     [=, &impl](detail::Backend& b) { pick(impl, b, device).recv(data, count, type, from); });
}
void Communicator::recv(void* data, size_t count, DataType type, int from) {
  recv_async(data, count, type, from).wait();
}

void Communicator::abort(const std::string& why) { live(impl_).abort(why, /*tell_peers=*/true); }

}  // namespace gantry::collective
