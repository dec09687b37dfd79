#include "runtime/core_worker.h"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "common/logging.h"
#include "rpc/auth.h"
#include "gantry/detail/registry.h"
#include "gantry/errors.h"
#include "object_store/shm_object.h"
#include "runtime/output_forwarder.h"
#include "runtime/task_executor.h"
#include "runtime/task_stream.h"

namespace gantry::internal {
namespace {

/// An inline value shared with the memory store (no copy).
class ValueBuffer final : public detail::Buffer {
 public:
  explicit ValueBuffer(ValuePtr value) : value_(std::move(value)) {}
  const uint8_t* data() const override { return reinterpret_cast<const uint8_t*>(value_->inline_data().data()); }
  size_t size() const override { return value_->inline_data().size(); }

 private:
  ValuePtr value_;
};

/// A large value mapped (copy-on-write) from the node's shared-memory store.
class MappedBuffer final : public detail::Buffer {
 public:
  explicit MappedBuffer(std::unique_ptr<MappedFile> file) : file_(std::move(file)) {}
  const uint8_t* data() const override { return file_->data(); }
  size_t size() const override { return file_->size(); }
  bool copy_on_write() const override { return true; }

 private:
  std::unique_ptr<MappedFile> file_;
};

/// Bytes owned by the buffer (an inline argument copied out of a spec).
class StringBuffer final : public detail::Buffer {
 public:
  explicit StringBuffer(std::string bytes) : bytes_(std::move(bytes)) {}
  const uint8_t* data() const override { return reinterpret_cast<const uint8_t*>(bytes_.data()); }
  size_t size() const override { return bytes_.size(); }

 private:
  std::string bytes_;
};

class ShmWritable final : public detail::WritableObject {
 public:
  ShmWritable(ObjectId id, std::unique_ptr<MappedFile> file, std::string node)
      : id_(id), file_(std::move(file)), node_(std::move(node)) {}
  uint8_t* data() override { return file_->data(); }
  size_t size() const override { return file_->size(); }
  const ObjectId& id() const { return id_; }
  std::unique_ptr<MappedFile> release_file() { return std::move(file_); }
  proto::ShmLocation location() const {
    proto::ShmLocation loc;
    loc.set_path(file_->path());
    loc.set_size(file_->size());
    loc.set_node_id(node_);
    loc.set_object_id(id_.binary());
    return loc;
  }

 private:
  ObjectId id_;
  std::unique_ptr<MappedFile> file_;
  std::string node_;
};

template <typename Duration>
std::string ms_text(Duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

/// The borrower name under which a task's result pins the refs inside it.
std::string result_pin_key(const std::string& result_owner, const ObjectId& result) {
  return result_owner + "#" + result.hex();
}

}  // namespace

CoreWorker::CoreWorker(CoreWorkerConfig config)
    : config_(std::move(config)),
      store_(config_.get_spin),
      refs_(config_.listen_address, [this](const ObjectId& id) { on_free(id); },
            [this](const ObjectId& id, const std::string& owner, bool add) { on_borrow(id, owner, add); }) {
  agent_ = proto::NodeAgent::NewStub(channels_.get(config_.agent_address));
  head_ = proto::Head::NewStub(channels_.get(config_.head_address));
  auto complete = [this](const ObjectId& id, ValuePtr value) { this->complete(id, std::move(value)); };
  SubmitterConfig sc;
  sc.self_address = config_.listen_address;
  sc.job_id = config_.job_id.binary();
  sc.agent = agent_;
  sc.channels = &channels_;
  sc.store = &store_;
  sc.refs = &refs_;
  sc.complete = complete;
  sc.discard = [this](const ObjectId& id, ValuePtr value) { discard(id, value); };
  sc.keep_lineage = [this](const proto::TaskSpec& spec, const ResourceSet& resources,
                           const proto::SchedulingStrategy& strategy, int retries) {
    std::lock_guard<std::mutex> lock(lineage_mu_);
    Lineage& l = lineage_[ObjectId::from_binary(spec.return_id())];
    l.spec = spec;
    l.resources = resources;
    l.strategy = strategy;
    l.retries = retries;
  };
  sc.inline_threshold = config_.inline_threshold;
  sc.force_grpc_streams = config_.force_grpc_streams;
  tasks_ = std::make_unique<TaskSubmitter>(sc);
  ActorSubmitterConfig ac;
  ac.self_address = config_.listen_address;
  ac.head = head_;
  ac.channels = &channels_;
  ac.store = &store_;
  ac.refs = &refs_;
  ac.complete = complete;
  ac.discard = sc.discard;
  ac.inline_threshold = config_.inline_threshold;
  ac.force_grpc_streams = config_.force_grpc_streams;
  actors_ = std::make_unique<ActorSubmitter>(ac);
  executor_ = std::make_unique<TaskExecutor>(*this);
}

CoreWorker::~CoreWorker() { stop(); }

void CoreWorker::start() {
  grpc::ServerBuilder builder;
  configure_server(builder);
  builder.AddListeningPort(config_.listen_address, server_credentials(config_.listen_address));
  builder.RegisterService(this);
  server_ = builder.BuildAndStart();
  if (!server_) throw Error("cannot listen on " + config_.listen_address);
  if (config_.is_driver) return;
  // Task streams arrive framed: on a Unix socket beside the gRPC one, or on a TCP port of
  // the same host when the worker serves on TCP (a multi-node cluster).
  std::string task_path = task_socket_path(config_.listen_address);
  std::string host;
  int port = 0;
  if (!task_path.empty()) task_listener_ = std::make_unique<FrameListener>(task_path);
  // Framed sockets are plaintext: with TLS on, task streams take the gRPC path instead.
  else if (!tls_enabled() && split_host_port(config_.listen_address, &host, &port))
    task_listener_ = FrameListener::tcp(host);
  if (task_listener_) {
    task_accept_thread_ = std::thread([this] {
      while (auto socket = task_listener_->accept()) {
        // One thread per caller's stream; it ends when the caller closes.
        std::thread([this, s = std::move(socket)]() mutable { executor_->serve_socket(std::move(s)); }).detach();
      }
    });
  }
  proto::RegisterWorkerRequest req;
  req.set_worker_id(config_.worker_id.binary());
  req.set_pid(::getpid());
  req.set_address(config_.listen_address);
  if (task_listener_) req.set_task_address(task_listener_->endpoint());
  proto::RegisterWorkerReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status s = agent_->RegisterWorker(&ctx, req, &reply);
  if (!s.ok()) throw Error("worker cannot register with its node agent: " + s.error_message());
}

void CoreWorker::stop() {
  if (stopped_.exchange(true)) return;
  store_.close();
  tasks_->stop();
  actors_->stop();
  if (task_listener_) task_listener_->shutdown();
  if (task_accept_thread_.joinable()) task_accept_thread_.join();
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    server_->Wait();
  }
}

size_t CoreWorker::num_pending_tasks() const { return tasks_->num_tasks(); }

void CoreWorker::add_local_ref(const ObjectId& id, const std::string& owner) { refs_.add_local(id, owner); }

void CoreWorker::remove_local_ref(const ObjectId& id) { refs_.remove_local(id); }

void CoreWorker::hold_contained(const ObjectId& id, std::vector<std::shared_ptr<detail::RefState>> nested) {
  if (nested.empty()) return;
  std::lock_guard<std::mutex> lock(contained_mu_);
  contained_[id] = std::move(nested);
}

ObjectId CoreWorker::put_inline(std::string bytes, std::vector<std::shared_ptr<detail::RefState>> nested) {
  ObjectId id = ObjectId::generate();
  hold_contained(id, std::move(nested));
  auto value = std::make_shared<proto::ObjectValue>();
  value->set_inline_data(std::move(bytes));
  refs_.add_owned(id);
  store_.put_new(id, std::move(value));
  return id;
}

std::unique_ptr<detail::WritableObject> CoreWorker::create_object_with_id(const ObjectId& id, size_t size) {
  proto::CreateObjectRequest req;
  req.set_id(id.binary());
  req.set_size(size);
  proto::CreateObjectReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = agent_->CreateObject(&ctx, req, &reply);
  if (!s.ok()) throw Error("cannot create an object in the node's store: " + s.error_message());
  if (reply.has_error()) throw_error(reply.error());
  try {
    return std::make_unique<ShmWritable>(id, warm_mappings_->create(reply.path(), size, reply.reused()),
                                         config_.node_id.hex());
  } catch (...) {
    delete_shm(id);  // give the reserved bytes back
    throw;
  }
}

std::unique_ptr<detail::WritableObject> CoreWorker::create_object(size_t size) {
  return create_object_with_id(ObjectId::generate(), size);
}

void CoreWorker::release_writable(std::unique_ptr<detail::WritableObject> object) {
  auto* shm = dynamic_cast<ShmWritable*>(object.get());
  if (shm != nullptr) warm_mappings_->keep(shm->release_file());
}

proto::ShmLocation CoreWorker::location_of(const detail::WritableObject& object) const {
  const auto* shm = dynamic_cast<const ShmWritable*>(&object);
  if (shm == nullptr) throw Error("not an object made by create_object");
  return shm->location();
}

ObjectId CoreWorker::seal_object(std::unique_ptr<detail::WritableObject> object,
                                 std::vector<std::shared_ptr<detail::RefState>> nested) {
  auto* shm = dynamic_cast<ShmWritable*>(object.get());
  if (shm == nullptr) throw Error("seal_object: not an object made by create_object");
  ObjectId id = shm->id();
  auto value = std::make_shared<proto::ObjectValue>();
  *value->mutable_shm() = shm->location();
  release_writable(std::move(object));  // readers map the file themselves
  hold_contained(id, std::move(nested));
  refs_.add_owned(id);
  store_.put_new(id, std::move(value));
  return id;
}

std::shared_ptr<detail::Buffer> CoreWorker::to_buffer(const ValuePtr& value, const ObjectId& id) {
  if (value->has_error()) {
    if (value->error().kind() == proto::ErrorInfo::TASK_CANCELLED) throw TaskCancelledError(value->error().message());
    throw_error(value->error());
  }
  if (value->has_shm()) return map_shm(value->shm());
  return std::make_shared<ValueBuffer>(value);
}

std::shared_ptr<detail::Buffer> CoreWorker::map_shm(const proto::ShmLocation& location) {
  if (location.node_id().empty() || location.node_id() == config_.node_id.hex())
    return std::make_shared<MappedBuffer>(MappedFile::open_copy_on_write(location.path()));
  // Another node's object: our agent copies it here (once per node), then we map the copy.
  // A copy evicted between the reply and our open is pulled again.
  BlockedScope blocked(*this);
  for (int attempt = 0;; ++attempt) {
    proto::PullObjectRequest req;
    *req.mutable_location() = location;
    proto::PullObjectReply reply;
    grpc::ClientContext ctx;
    grpc::Status s = agent_->PullObject(&ctx, req, &reply);
    if (!s.ok())
      throw Error("cannot fetch object " + ObjectId::from_binary(location.object_id()).hex() +
                  " from node " + location.node_id() + ": this node's agent answered " + s.error_message());
    if (reply.has_error()) throw_error(reply.error());
    try {
      return std::make_shared<MappedBuffer>(MappedFile::open_copy_on_write(reply.path()));
    } catch (const ObjectLostError&) {
      if (attempt > 0) throw;
    }
  }
}

void CoreWorker::set_blocked(bool blocked) {
  // Only the threads running tasks hold CPUs to lend.
  if (config_.is_driver || !executor_->busy() || current_task() == nullptr) return;
  std::lock_guard<std::mutex> lock(blocked_mu_);
  if (blocked ? blocked_depth_++ > 0 : --blocked_depth_ > 0) return;
  proto::WorkerBlocked req;
  req.set_worker_id(config_.worker_id.binary());
  req.set_blocked(blocked);
  proto::Empty reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  agent_->NotifyWorkerBlocked(&ctx, req, &reply);
}

bool CoreWorker::rebuild(const ObjectId& id, const std::string& lost_node) {
  ValuePtr current = store_.get_if_ready(id);
  if (!current || !current->has_shm() || current->shm().node_id() != lost_node) return false;
  Lineage l;
  {
    std::lock_guard<std::mutex> lock(lineage_mu_);
    auto it = lineage_.find(id);
    constexpr int kMaxRebuilds = 3;
    if (it == lineage_.end() || it->second.rebuilds >= kMaxRebuilds) return false;
    ++it->second.rebuilds;
    l = it->second;
  }
  if (!store_.reset_pending(id)) return false;
  GANTRY_LOG_INFO("object {} was lost with node {}; running {} again to rebuild it", id.hex(),
                  lost_node.substr(0, 8), l.spec.function());
  l.spec.set_attempt(l.spec.attempt() + 1);
  tasks_->submit(std::move(l.spec), {}, std::move(l.resources), std::move(l.strategy), l.retries, false);
  return true;
}

ValuePtr CoreWorker::fetch_from_owner(const ObjectId& id, const std::string& owner,
                                      std::optional<std::chrono::milliseconds> timeout,
                                      const std::string& lost_node) {
  auto stub = proto::WorkerService::NewStub(channels_.get(owner));
  proto::GetObjectRequest req;
  req.set_id(id.binary());
  req.set_timeout_ms(timeout ? timeout->count() : -1);
  req.set_lost_node_id(lost_node);
  proto::GetObjectReply reply;
  grpc::ClientContext ctx;
  if (timeout) ctx.set_deadline(std::chrono::system_clock::now() + *timeout + std::chrono::seconds(5));
  grpc::Status s = stub->GetObject(&ctx, req, &reply);
  if (!s.ok())
    throw ObjectLostError("object " + id.hex() + " is lost: its owner at " + owner +
                          " cannot be reached (" + s.error_message() + "); the owner process probably exited");
  if (!reply.known())
    throw ObjectLostError("object " + id.hex() + " is lost: its owner at " + owner +
                          " no longer has it (every reference was dropped)");
  if (!reply.ready()) return nullptr;
  return std::make_shared<proto::ObjectValue>(std::move(*reply.mutable_value()));
}

std::shared_ptr<detail::Buffer> CoreWorker::get(const ObjectId& id, const std::string& owner,
                                                std::optional<std::chrono::milliseconds> timeout) {
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout) deadline = std::chrono::steady_clock::now() + *timeout;
  std::string lost_node;  // set when the value we had sat on a node that died
  while (true) {
    ValuePtr value;
    if (owner == config_.listen_address) {
      value = store_.get_if_ready(id);
      // A lone call that is about to answer: not worth sleeping (or telling the agent).
      if (!value && (!timeout || timeout->count() > 0)) value = store_.spin_for(id);
      if (!value) {
        BlockedScope blocked(*this);
        value = store_.wait(id, deadline);
      }
    } else {
      BlockedScope blocked(*this);
      std::optional<std::chrono::milliseconds> left;
      if (deadline)
        left = std::max(std::chrono::milliseconds(0), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                          *deadline - std::chrono::steady_clock::now()));
      // Telling the owner about the loss makes it rebuild the object before it answers.
      value = fetch_from_owner(id, owner, left, lost_node);
    }
    if (!value)
      throw GetTimeoutError("object " + id.hex() + " was not ready within " + ms_text(*timeout) +
                            "; wait longer, or use gantry::wait to poll");
    try {
      return to_buffer(value, id);
    } catch (const ObjectLostError&) {
      // Its node died. The owner runs the task that made it again when it can; else
      // (or if the same node is reported twice) the loss stands.
      if (!value->has_shm() || value->shm().node_id() == lost_node) throw;
      lost_node = value->shm().node_id();
      if (owner == config_.listen_address && !rebuild(id, lost_node)) throw;
    }
  }
}

std::vector<bool> CoreWorker::wait(const std::vector<std::pair<ObjectId, std::string>>& ids, size_t num_returns,
                                   std::optional<std::chrono::milliseconds> timeout) {
  num_returns = std::min(num_returns, ids.size());
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout) deadline = std::chrono::steady_clock::now() + *timeout;
  bool all_owned = true;
  std::vector<ObjectId> plain;
  for (const auto& [id, owner] : ids) {
    all_owned &= owner == config_.listen_address;
    plain.push_back(id);
  }
  if (all_owned) {
    std::vector<bool> ready = store_.wait_many(plain, 0, deadline);
    size_t n = std::count(ready.begin(), ready.end(), true);
    if (n >= num_returns) return ready;
    BlockedScope blocked(*this);
    return store_.wait_many(plain, num_returns, deadline);
  }
  BlockedScope blocked(*this);
  // Mixed owners: poll, owned objects locally and borrowed ones at their owners.
  std::vector<bool> ready(ids.size(), false);
  while (true) {
    size_t n = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!ready[i]) {
        const auto& [id, owner] = ids[i];
        if (owner == config_.listen_address) {
          ready[i] = !store_.contains(id) || store_.get_if_ready(id) != nullptr;
        } else {
          try {
            ready[i] = fetch_from_owner(id, owner, std::chrono::milliseconds(0)) != nullptr;
          } catch (const ObjectLostError&) {
            ready[i] = true;  // get() reports it
          }
        }
      }
      n += ready[i];
    }
    if (n >= num_returns || (deadline && std::chrono::steady_clock::now() >= *deadline)) return ready;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

proto::TaskArg CoreWorker::to_task_arg(detail::EncodedArg& arg, std::vector<ObjectId>* refs) {
  proto::TaskArg out;
  for (const auto& nested : arg.nested) refs->push_back(nested->id());
  if (arg.ref) {
    out.mutable_ref()->set_id(arg.ref->id().binary());
    out.mutable_ref()->set_owner_address(arg.ref->owner());
    refs->push_back(arg.ref->id());
  } else {
    out.set_inline_data(std::move(arg.inline_data));
  }
  return out;
}

namespace {

ResourceSet resources_of(double cpus, double gpus, double memory, const std::map<std::string, double>& custom,
                         const std::string& what) {
  std::map<std::string, double> all = custom;
  for (const auto& [name, q] : custom)
    if (name == kCpu || name == kGpu || name == kMemory)
      throw Error("invalid options for " + what + ": set " + name + " with its own field, not in resources");
  all[kCpu] = cpus;
  all[kGpu] = gpus;
  all[kMemory] = memory;
  try {
    return ResourceSet::from_doubles(all);
  } catch (const std::invalid_argument& e) {
    throw Error("invalid options for " + what + ": " + e.what());
  }
}

proto::SchedulingStrategy strategy_of(const SchedulingStrategy& s, const std::string& what) {
  proto::SchedulingStrategy out;
  switch (s.kind) {
    case SchedulingStrategy::Kind::kDefault: out.set_kind(proto::SchedulingStrategy::DEFAULT); break;
    case SchedulingStrategy::Kind::kSpread: out.set_kind(proto::SchedulingStrategy::SPREAD); break;
    case SchedulingStrategy::Kind::kNodeAffinity: {
      UniqueId node = UniqueId::from_hex(s.node_id);
      if (node.is_nil())
        throw Error("invalid options for " + what + ": node_affinity needs a node id of 32 hex digits, as "
                    "gantry::nodes() lists them, not '" + s.node_id + "'");
      out.set_kind(proto::SchedulingStrategy::NODE_AFFINITY);
      out.set_node_id(node.binary());
      out.set_soft(s.soft);
      break;
    }
    case SchedulingStrategy::Kind::kPlacementGroup: {
      UniqueId group = UniqueId::from_hex(s.placement_group_id);
      if (group.is_nil())
        throw Error("invalid options for " + what + ": placement_group needs a group id of 32 hex digits, as "
                    "PlacementGroup::id() gives it, not '" + s.placement_group_id + "'");
      if (s.bundle_index < -1)
        throw Error("invalid options for " + what + ": bundle_index must be -1 (any bundle) or a bundle's index, not " +
                    std::to_string(s.bundle_index));
      out.set_kind(proto::SchedulingStrategy::PLACEMENT_GROUP);
      out.set_placement_group_id(group.binary());
      out.set_bundle_index(s.bundle_index);
      break;
    }
  }
  return out;
}

}  // namespace

ObjectId CoreWorker::submit_task(const std::string& function, std::vector<detail::EncodedArg> args,
                                 const TaskOptions& options) {
  if (stopped_) throw Error("gantry is shut down");
  ResourceSet resources = resources_of(options.num_cpus, options.num_gpus, options.memory, options.resources,
                                       "task " + function);
  proto::SchedulingStrategy strategy = strategy_of(options.scheduling, "task " + function);
  TaskId id = TaskId::generate();
  proto::TaskSpec spec;
  spec.set_task_id(id.binary());
  spec.set_return_id(id.binary());
  spec.set_function(function);
  spec.set_name(options.name);
  spec.set_owner_address(config_.listen_address);
  spec.set_job_id(config_.job_id.binary());
  *spec.mutable_resources() = to_proto(resources);
  std::vector<ObjectId> arg_refs;
  for (auto& a : args) *spec.add_args() = to_task_arg(a, &arg_refs);
  store_.add_pending(id);
  refs_.add_owned(id, /*task_result=*/true);
  tasks_->submit(std::move(spec), std::move(arg_refs), std::move(resources), std::move(strategy),
                 options.max_retries, options.retry_exceptions);
  return id;
}

ActorId CoreWorker::create_actor(const std::string& factory, const std::string& class_key,
                                 std::vector<detail::EncodedArg> args, const ActorOptions& options) {
  if (stopped_) throw Error("gantry is shut down");
  ResourceSet resources = resources_of(options.num_cpus, options.num_gpus, options.memory, options.resources,
                                       "actor " + class_key);
  if (options.max_concurrency < 1)
    throw Error("invalid options for actor " + class_key + ": max_concurrency must be at least 1, not " +
                std::to_string(options.max_concurrency));
  ActorId id = ActorId::generate();
  proto::ActorSpec spec;
  spec.set_actor_id(id.binary());
  spec.set_name(options.name);
  spec.set_class_name(class_key);
  spec.set_factory(factory);
  *spec.mutable_resources() = to_proto(resources);
  spec.set_max_restarts(options.max_restarts);
  spec.set_max_task_retries(options.max_task_retries);
  spec.set_detached(options.detached);
  spec.set_max_concurrency(options.max_concurrency);
  spec.set_owner_address(config_.listen_address);
  spec.set_job_id(config_.job_id.binary());
  *spec.mutable_strategy() = strategy_of(options.scheduling, "actor " + class_key);
  std::vector<ObjectId> refs;
  std::vector<std::shared_ptr<detail::RefState>> keep;
  for (auto& a : args) {
    if (a.ref) keep.push_back(a.ref);
    keep.insert(keep.end(), a.nested.begin(), a.nested.end());
    *spec.add_args() = to_task_arg(a, &refs);
  }
  {
    std::lock_guard<std::mutex> lock(actor_args_mu_);
    actor_args_[id] = std::move(keep);
  }
  actors_->set_max_task_retries(id, options.max_task_retries);
  proto::CreateActorRegistration reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->CreateActor(&ctx, spec, &reply);
  if (!s.ok()) throw Error("cannot create actor " + class_key + ": the head answered " + s.error_message());
  if (reply.has_error()) {
    std::lock_guard<std::mutex> lock(actor_args_mu_);
    actor_args_.erase(id);
    throw_error(reply.error());
  }
  return id;
}

ObjectId CoreWorker::submit_actor_task(const ActorId& actor, const std::string& method,
                                       std::vector<detail::EncodedArg> args) {
  if (stopped_) throw Error("gantry is shut down");
  TaskId id = TaskId::generate();
  proto::TaskSpec spec;
  spec.set_task_id(id.binary());
  spec.set_return_id(id.binary());
  spec.set_function(method);
  spec.set_owner_address(config_.listen_address);
  spec.set_job_id(config_.job_id.binary());
  spec.set_actor_id(actor.binary());
  std::vector<ObjectId> arg_refs;
  for (auto& a : args) *spec.add_args() = to_task_arg(a, &arg_refs);
  store_.add_pending(id);
  refs_.add_owned(id, /*task_result=*/true);
  actors_->submit(actor, std::move(spec), std::move(arg_refs));
  return id;
}

std::optional<ActorId> CoreWorker::get_named_actor(const std::string& name, const std::string& class_key) {
  proto::GetActorRequest req;
  req.set_name(name);
  proto::GetActorReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->GetActor(&ctx, req, &reply);
  if (!s.ok()) throw Error("cannot look up actor '" + name + "': " + s.error_message());
  if (!reply.found() || reply.info().state() == proto::ActorInfo::DEAD) return std::nullopt;
  if (reply.info().class_name() != class_key)
    throw Error("actor '" + name + "' is a " + reply.info().class_name() + ", not a " + class_key);
  return ActorId::from_binary(reply.info().actor_id());
}

void CoreWorker::kill_actor(const ActorId& actor, bool no_restart) {
  proto::KillActorRequest req;
  req.set_actor_id(actor.binary());
  req.set_no_restart(no_restart);
  proto::Empty reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->KillActor(&ctx, req, &reply);
  if (!s.ok()) throw Error("cannot kill actor " + actor.hex() + ": " + s.error_message());
  if (no_restart) {
    std::lock_guard<std::mutex> lock(actor_args_mu_);
    actor_args_.erase(actor);
  }
}

void CoreWorker::cancel(const ObjectId& id, const std::string& owner, const CancelOptions& options) {
  if (stopped_) throw Error("gantry is shut down");
  if (owner != config_.listen_address)
    throw Error("gantry::cancel: object " + id.hex() + " is owned by " + owner +
                "; only the process that submitted a task can cancel it, not one it was passed to");
  std::string worker;
  CancelOutcome outcome = tasks_->cancel(id, options.force, &worker);
  if (outcome == CancelOutcome::kNotFound) outcome = actors_->cancel(id, options.force, &worker);
  if (outcome == CancelOutcome::kForceRefused)
    throw Error(
        "gantry::cancel: force-cancelling an actor call would kill the actor; use gantry::kill, or cancel "
        "without force (object " +
        id.hex() + ")");
  if (outcome == CancelOutcome::kNotFound) {
    if (!refs_.is_task_result(id))
      throw Error("gantry::cancel: object " + id.hex() +
                  " was not made by a task or actor call (a gantry::put?); "
                  "only their results can be cancelled");
    return;  // finished: its value stays
  }
  if (worker.empty()) return;
  proto::CancelTaskRequest request;
  request.set_task_id(id.binary());
  auto stub = proto::WorkerService::NewStub(channels_.get(worker));
  send_and_forget<proto::Empty>(std::move(request), std::chrono::seconds(5),
                                [&](auto... call) { stub->async()->CancelTask(call...); });
}

std::vector<NodeInfo> CoreWorker::nodes() {
  proto::Empty req;
  proto::ListNodesReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->ListNodes(&ctx, req, &reply);
  if (!s.ok()) throw Error("cannot list the cluster's nodes: the head answered " + s.error_message());
  std::vector<NodeInfo> out;
  for (const auto& n : reply.nodes()) {
    NodeInfo info;
    info.node_id = UniqueId::from_binary(n.node_id()).hex();
    info.address = n.agent_address();
    info.hostname = n.hostname();
    info.alive = n.alive();
    info.resources = from_proto(n.total()).to_doubles();
    out.push_back(std::move(info));
  }
  return out;
}

namespace {

PlacementGroupOptions options_of(const proto::PlacementGroupSpec& spec) {
  PlacementGroupOptions options;
  options.name = spec.name();
  options.strategy = static_cast<PlacementStrategy>(spec.strategy());
  for (const auto& b : spec.bundles()) options.bundles.push_back(from_proto(b).to_doubles());
  return options;
}

}  // namespace

std::string CoreWorker::create_placement_group(const PlacementGroupOptions& options) {
  proto::PlacementGroupSpec spec;
  UniqueId id = UniqueId::generate();
  spec.set_group_id(id.binary());
  spec.set_name(options.name);
  static_assert(static_cast<int>(PlacementStrategy::kStrictSpread) == proto::PlacementGroupSpec::STRICT_SPREAD);
  spec.set_strategy(static_cast<proto::PlacementGroupSpec::Strategy>(options.strategy));
  spec.set_job_id(config_.job_id.binary());
  for (size_t i = 0; i < options.bundles.size(); ++i) {
    try {
      *spec.add_bundles() = to_proto(ResourceSet::from_doubles(options.bundles[i]));
    } catch (const std::invalid_argument& e) {
      throw Error("invalid placement group: bundle " + std::to_string(i) + ": " + e.what());
    }
  }
  proto::CreatePlacementGroupReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->CreatePlacementGroup(&ctx, spec, &reply);
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT || s.error_code() == grpc::StatusCode::ALREADY_EXISTS)
    throw Error("invalid placement group: " + s.error_message());
  if (!s.ok()) throw Error("cannot create a placement group: the head answered " + s.error_message());
  if (reply.has_error()) throw_error(reply.error());
  return id.hex();
}

bool CoreWorker::wait_placement_group(const std::string& id, std::chrono::milliseconds timeout) {
  UniqueId group = UniqueId::from_hex(id);
  if (group.is_nil()) throw Error("PlacementGroup::wait on an empty handle");
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    // The head holds each call at most a few seconds, so a long wait survives timeouts
    // of the channel and the driver still notices shutdown.
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    proto::PlacementGroupRequest req;
    req.set_group_id(group.binary());
    req.set_wait(left.count() > 0);
    req.set_timeout_ms(std::clamp<int64_t>(left.count(), 0, 5000));
    proto::GetPlacementGroupReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Status s = head_->GetPlacementGroup(&ctx, req, &reply);
    if (!s.ok()) throw Error("cannot wait for placement group " + id + ": the head answered " + s.error_message());
    if (!reply.found()) throw Error("placement group " + id + " does not exist");
    auto state = reply.info().state();
    if (state == proto::PlacementGroupInfo::CREATED) return true;
    if (state == proto::PlacementGroupInfo::REMOVED || std::chrono::steady_clock::now() >= deadline) return false;
  }
}

void CoreWorker::remove_placement_group(const std::string& id) {
  UniqueId group = UniqueId::from_hex(id);
  if (group.is_nil()) throw Error("remove_placement_group on an empty handle");
  proto::PlacementGroupRequest req;
  req.set_group_id(group.binary());
  proto::Empty reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->RemovePlacementGroup(&ctx, req, &reply);
  if (!s.ok()) throw Error("cannot remove placement group " + id + ": the head answered " + s.error_message());
}

std::optional<std::pair<std::string, PlacementGroupOptions>> CoreWorker::find_placement_group(const std::string& name) {
  proto::PlacementGroupRequest req;
  req.set_name(name);
  proto::GetPlacementGroupReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->GetPlacementGroup(&ctx, req, &reply);
  if (!s.ok()) throw Error("cannot look up placement group '" + name + "': the head answered " + s.error_message());
  if (!reply.found() || reply.info().state() == proto::PlacementGroupInfo::REMOVED) return std::nullopt;
  return std::make_pair(UniqueId::from_binary(reply.info().spec().group_id()).hex(), options_of(reply.info().spec()));
}

std::vector<std::string> CoreWorker::placement_group_bundle_nodes(const std::string& id) {
  UniqueId group = UniqueId::from_hex(id);
  if (group.is_nil()) throw Error("PlacementGroup::bundle_nodes on an empty handle");
  proto::PlacementGroupRequest req;
  req.set_group_id(group.binary());
  proto::GetPlacementGroupReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->GetPlacementGroup(&ctx, req, &reply);
  if (!s.ok()) throw Error("cannot look up placement group " + id + ": the head answered " + s.error_message());
  if (!reply.found()) throw Error("placement group " + id + " does not exist");
  std::vector<std::string> out;
  for (const std::string& node : reply.info().bundle_node_ids())
    out.push_back(node.empty() ? std::string() : UniqueId::from_binary(node).hex());
  out.resize(static_cast<size_t>(reply.info().spec().bundles_size()));
  return out;
}

RuntimeContext CoreWorker::context() const {
  RuntimeContext c;
  c.node_id = config_.node_id.hex();
  c.node_ip = config_.node_ip;
  c.tls = tls_enabled();
  c.worker_id = config_.worker_id.hex();
  c.job_id = config_.job_id.hex();
  c.pid = ::getpid();
  c.is_driver = config_.is_driver;
  c.gpu_ids = config_.gpu_ids;
  c.session_dir = config_.session_dir;
  if (const proto::TaskSpec* spec = current_task()) {
    c.task_id = TaskId::from_binary(spec->task_id()).hex();
    c.function = spec->function();
    if (!spec->actor_id().empty()) c.actor_id = ActorId::from_binary(spec->actor_id()).hex();
    c.assigned_resources = from_proto(spec->resources()).to_doubles();
  }
  if (!executor_->actor_id().is_nil() && (c.task_id.empty() || !c.actor_id.empty()))
    c.assigned_resources = from_proto(executor_->actor_resources()).to_doubles();
  if (c.actor_id.empty() && !executor_->actor_id().is_nil()) c.actor_id = executor_->actor_id().hex();
  return c;
}

std::shared_ptr<detail::Buffer> CoreWorker::resolve_arg(const proto::TaskArg& arg) {
  if (arg.has_shm()) return map_shm(arg.shm());
  if (arg.has_ref()) return get(ObjectId::from_binary(arg.ref().id()), arg.ref().owner_address(), std::nullopt);
  return std::make_shared<StringBuffer>(arg.inline_data());
}

void CoreWorker::on_free(const ObjectId& id) {
  {
    std::lock_guard<std::mutex> lock(lineage_mu_);
    lineage_.erase(id);
  }
  ValuePtr value = store_.erase(id);
  if (value && value->has_shm()) delete_shm(id, value->shm().node_id());
  std::vector<std::shared_ptr<detail::RefState>> contained;
  std::vector<proto::ObjectRefMsg> pins;
  {
    std::lock_guard<std::mutex> lock(contained_mu_);
    if (auto it = contained_.find(id); it != contained_.end()) {
      contained = std::move(it->second);
      contained_.erase(it);
    }
    if (auto it = result_pins_.find(id); it != result_pins_.end()) {
      pins = std::move(it->second);
      result_pins_.erase(it);
    }
  }
  // Released here, off the lock: releasing may free further objects (and re-enter).
  release_result_pins(id, pins);
}

void CoreWorker::complete(const ObjectId& id, ValuePtr value) {
  bool has_shm = value->has_shm();
  std::string holder = has_shm ? value->shm().node_id() : std::string();
  bool has_pins = value->contained_size() > 0;
  // Recorded before the value is published, so an on_free racing with us finds them.
  if (has_pins) {
    std::lock_guard<std::mutex> lock(contained_mu_);
    result_pins_[id].assign(value->contained().begin(), value->contained().end());
  }
  if (store_.put(id, std::move(value))) return;
  // Nobody wants the result any more: give back what it held.
  if (has_shm) delete_shm(id, holder);
  if (has_pins) on_free(id);
}

void CoreWorker::discard(const ObjectId& id, const ValuePtr& value) {
  if (value->has_shm()) delete_shm(id, value->shm().node_id());
  if (value->contained_size() == 0) return;
  std::vector<proto::ObjectRefMsg> pins(value->contained().begin(), value->contained().end());
  release_result_pins(id, pins);
}

void CoreWorker::pin_for_result(const std::vector<std::shared_ptr<detail::RefState>>& nested,
                                const proto::TaskSpec& spec, proto::ObjectValue* value) {
  if (nested.empty()) return;
  ObjectId result = ObjectId::from_binary(spec.return_id());
  std::string key = result_pin_key(spec.owner_address(), result);
  std::map<std::string, std::vector<ObjectId>> by_owner;
  std::set<ObjectId> seen;
  for (const auto& ref : nested) {
    if (!seen.insert(ref->id()).second) continue;
    by_owner[ref->owner()].push_back(ref->id());
    proto::ObjectRefMsg* msg = value->add_contained();
    msg->set_id(ref->id().binary());
    msg->set_owner_address(ref->owner());
  }
  for (const auto& [owner, ids] : by_owner) update_borrowers(owner, ids, key, /*add=*/true, /*wait=*/true);
}

void CoreWorker::release_result_pins(const ObjectId& result, const std::vector<proto::ObjectRefMsg>& pins) {
  if (pins.empty()) return;
  std::map<std::string, std::vector<ObjectId>> by_owner;
  for (const auto& pin : pins) by_owner[pin.owner_address()].push_back(ObjectId::from_binary(pin.id()));
  std::string key = result_pin_key(config_.listen_address, result);
  // A pin key is never added again, so its removal need not wait.
  for (const auto& [owner, ids] : by_owner) update_borrowers(owner, ids, key, /*add=*/false, /*wait=*/false);
}

void CoreWorker::update_borrowers(const std::string& owner, const std::vector<ObjectId>& ids,
                                  const std::string& borrower, bool add, bool wait) {
  if (owner == config_.listen_address) {
    for (const auto& id : ids) add ? refs_.add_borrower(id, borrower) : refs_.remove_borrower(id, borrower);
    return;
  }
  if (stopped_) return;
  proto::BorrowUpdate request;
  for (const auto& id : ids) (add ? request.add_add() : request.add_remove())->assign(id.binary());
  request.set_borrower_address(borrower);
  auto stub = proto::WorkerService::NewStub(channels_.get(owner));
  if (!wait) {
    send_and_forget<proto::Empty>(std::move(request), std::chrono::seconds(5),
                                  [&](auto... call) { stub->async()->UpdateBorrowers(call...); });
    return;
  }
  proto::Empty reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Status s = stub->UpdateBorrowers(&ctx, request, &reply);
  if (!s.ok()) GANTRY_LOG_DEBUG("borrow update for {} objects at {} failed: {}", ids.size(), owner, s.error_message());
}

void CoreWorker::delete_shm(const ObjectId& id, const std::string& holder_node) {
  if (stopped_) return;
  proto::DeleteObjectsRequest request;
  request.add_ids(id.binary());
  request.add_holder_nodes(holder_node);
  // Once the store has pooled or unlinked the file, a mapping kept for it may go.
  send_and_forget<proto::Empty>(
      std::move(request), std::chrono::seconds(5), [&](auto... call) { agent_->async()->DeleteObjects(call...); },
      [warm = warm_mappings_] { warm->drop_unlinked(); });
}

void CoreWorker::on_borrow(const ObjectId& id, const std::string& owner, bool add) {
  // Waits for removes too: a later add of the same borrow must not overtake this one.
  update_borrowers(owner, {id}, config_.listen_address, add, /*wait=*/true);
}

grpc::Status CoreWorker::PushTasks(grpc::ServerContext* ctx,
                                   grpc::ServerReaderWriter<proto::ResultBatch, proto::TaskBatch>* stream) {
  GANTRY_REQUIRE_TOKEN(ctx);
  return executor_->push_tasks(ctx, stream);
}

grpc::Status CoreWorker::CreateActor(grpc::ServerContext* ctx, const proto::CreateActorRequest* req,
                                     proto::CreateActorReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  executor_->create_actor(*req, reply);
  return grpc::Status::OK;
}

grpc::Status CoreWorker::GetObject(grpc::ServerContext* ctx, const proto::GetObjectRequest* req,
                                   proto::GetObjectReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  ObjectId id = ObjectId::from_binary(req->id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "object id must be 16 bytes"};
  if (!store_.contains(id)) return grpc::Status::OK;  // known = false
  reply->set_known(true);
  if (!req->lost_node_id().empty()) rebuild(id, req->lost_node_id());
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (req->timeout_ms() >= 0) deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(req->timeout_ms());
  try {
    ValuePtr value = store_.wait(id, deadline);
    if (value) {
      reply->set_ready(true);
      *reply->mutable_value() = *value;
    }
  } catch (const ObjectLostError&) {
    reply->set_known(false);
  } catch (const Error& e) {
    return {grpc::StatusCode::UNAVAILABLE, e.what()};
  }
  return grpc::Status::OK;
}

grpc::Status CoreWorker::UpdateBorrowers(grpc::ServerContext* ctx, const proto::BorrowUpdate* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  for (const auto& raw : req->add()) refs_.add_borrower(ObjectId::from_binary(raw), req->borrower_address());
  for (const auto& raw : req->remove()) refs_.remove_borrower(ObjectId::from_binary(raw), req->borrower_address());
  return grpc::Status::OK;
}

grpc::Status CoreWorker::StealTasks(grpc::ServerContext* ctx, const proto::StealTasksRequest* req,
                                    proto::StealTasksReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::vector<TaskId> ids;
  for (const std::string& id : req->task_ids()) {
    TaskId task = TaskId::from_binary(id);
    if (task.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "task ids must be 16 bytes"};
    ids.push_back(task);
  }
  for (const TaskId& id : executor_->steal(ids)) reply->add_stolen(id.binary());
  return grpc::Status::OK;
}

grpc::Status CoreWorker::GetTaskEvents(grpc::ServerContext* ctx, const proto::TaskEventsRequest* req,
                                       proto::TaskEvents* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  if (req->limit() < 0) return {grpc::StatusCode::INVALID_ARGUMENT, "limit must not be negative"};
  reply->set_pid(::getpid());
  reply->set_node_id(config_.node_id.binary());
  executor_->describe_events(*req, reply);
  return grpc::Status::OK;
}

grpc::Status CoreWorker::CancelTask(grpc::ServerContext* ctx, const proto::CancelTaskRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  TaskId id = TaskId::from_binary(req->task_id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "task id must be 16 bytes"};
  executor_->cancel(id);
  return grpc::Status::OK;
}

grpc::Status CoreWorker::PrintOutput(grpc::ServerContext* ctx, const proto::OutputText* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  if (!config_.is_driver) return {grpc::StatusCode::FAILED_PRECONDITION, "only a driver prints its workers' output"};
  if (req->stream() != 1 && req->stream() != 2) return {grpc::StatusCode::INVALID_ARGUMENT, "stream must be 1 or 2"};
  const std::string& text = req->text();
  size_t done = 0;
  while (done < text.size()) {
    ssize_t w = ::write(req->stream(), text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;  // our terminal is gone: the lines are in the worker's log anyway
    done += static_cast<size_t>(w);
  }
  return grpc::Status::OK;
}

grpc::Status CoreWorker::ListOwned(grpc::ServerContext* ctx, const proto::ListOwnedRequest* req,
                                  proto::OwnedState* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  size_t limit = req->limit() > 0 ? static_cast<size_t>(req->limit()) : 1000;
  reply->set_owner_address(config_.listen_address);
  reply->set_job_id(config_.job_id.binary());
  reply->set_pid(::getpid());
  if (req->tasks()) {
    if (tasks_) tasks_->describe(limit, reply);
    if (actors_) actors_->describe(limit, reply);
  }
  if (req->objects()) {
    std::vector<ReferenceCounter::OwnedRef> owned = refs_.owned(limit + 1);
    if (owned.size() > limit) {
      owned.pop_back();
      reply->set_truncated(true);
    }
    for (const auto& ref : owned) {
      proto::ObjectStateInfo* o = reply->add_objects();
      o->set_object_id(ref.id.binary());
      o->set_local_refs(ref.local);
      o->set_submitted_refs(ref.submitted);
      o->set_borrowers(static_cast<int32_t>(ref.borrowers));
      ValuePtr value = store_.get_if_ready(ref.id);
      if (!value) {
        o->set_location("PENDING");
      } else if (value->has_shm()) {
        o->set_location("SHARED_MEMORY");
        o->set_size(value->shm().size());
        o->set_node_id(value->shm().node_id());
      } else if (value->has_error()) {
        o->set_location("ERROR");
      } else {
        o->set_location("INLINE");
        o->set_size(value->inline_data().size());
      }
    }
  }
  return grpc::Status::OK;
}

}  // namespace gantry::internal
