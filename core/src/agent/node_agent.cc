#include "agent/node_agent.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "common/logging.h"
#include "gantry/errors.h"
#include "rpc/auth.h"
#include "rpc/frame_socket.h"
#include "rpc/grpc_util.h"
#include "runtime/process_env.h"

namespace gantry::internal {
namespace {

constexpr int kMaxStartFailures = 3;

ResourceSet cpu_part(const ResourceSet& resources) {
  ResourceSet out;
  out.set(kCpu, resources.get(kCpu));
  return out;
}

}  // namespace

NodeAgent::NodeAgent(NodeAgentConfig config)
    : config_(std::move(config)), resources_(config_.total, config_.num_gpus) {
  store_ = std::make_unique<ObjectStore>(config_.store_dir, config_.store_capacity);
  head_ = proto::Head::NewStub(make_channel(config_.head_address));
  pool_ = std::make_unique<WorkerPool>(
      config_.launch,
      [this](const UniqueId& id, pid_t pid, const std::string& reason) { on_worker_exit(id, pid, reason); });
}

NodeAgent::~NodeAgent() { stop(); }

void NodeAgent::start() {
  grpc::ServerBuilder builder;
  configure_server(builder);
  builder.AddListeningPort(config_.listen_address, grpc::InsecureServerCredentials());
  builder.RegisterService(this);
  server_ = builder.BuildAndStart();
  if (!server_) throw Error("node agent cannot listen on " + config_.listen_address);

  proto::RegisterNodeRequest req;
  req.set_node_id(config_.node_id.binary());
  req.set_agent_address(config_.listen_address);
  *req.mutable_total() = to_proto(config_.total);
  req.set_num_gpus(config_.num_gpus);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  proto::Empty reply;
  grpc::Status s = head_->RegisterNode(&ctx, req, &reply);
  if (!s.ok()) throw Error("node agent cannot register with the head at " + config_.head_address + ": " + s.error_message());

  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < config_.prestart_workers; ++i) start_worker_locked({});
}

void NodeAgent::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    cv_.notify_all();
  }
  if (pool_) pool_->stop_all(std::chrono::milliseconds(1000));
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  pool_.reset();
  if (server_) server_->Wait();
}

void NodeAgent::start_worker_locked(const std::vector<int>& gpu_ids) {
  UniqueId id = pool_->start(gpu_ids);
  Worker w;
  w.id = id;
  w.gpu_ids = gpu_ids;
  workers_.emplace(id, std::move(w));
}

NodeAgent::Worker* NodeAgent::find_idle_worker_locked(const std::vector<int>& gpu_ids) {
  for (auto& [id, w] : workers_)
    if (w.state == WorkerState::kIdle && w.gpu_ids == gpu_ids) return &w;
  return nullptr;
}

void NodeAgent::try_grant_locked() {
  if (stopping_) return;
  // Workers already starting, per GPU set, so one slow start-up does not start a
  // second process for the same waiting request.
  std::map<std::vector<int>, int> starting, waiting;
  for (const auto& [id, w] : workers_)
    if (w.state == WorkerState::kStarting) ++starting[w.gpu_ids];

  for (auto it = pending_.begin(); it != pending_.end();) {
    PendingLease& p = **it;
    if (!p.allocation) p.allocation = resources_.allocate(p.resources);
    if (!p.allocation) {
      ++it;
      continue;
    }
    std::vector<int> gpu_ids = p.allocation->gpu_ids();
    Worker* w = find_idle_worker_locked(gpu_ids);
    if (w == nullptr) {
      if (++waiting[gpu_ids] > starting[gpu_ids]) {
        if (!gpu_ids.empty()) {
          // A worker bound to other devices will not serve this shape again soon; make
          // room rather than let GPU-pinned processes pile up.
          for (auto& [id, other] : workers_)
            if (other.state == WorkerState::kIdle && !other.gpu_ids.empty() && other.gpu_ids != gpu_ids) {
              other.state = WorkerState::kDead;
              pool_->signal(other.id, SIGKILL);
              break;
            }
        }
        try {
          start_worker_locked(gpu_ids);
          ++starting[gpu_ids];
        } catch (const std::exception& e) {
          GANTRY_LOG_ERROR("{}", e.what());
        }
      }
      ++it;
      continue;
    }
    uint64_t lease_id = next_lease_id_++;
    bool for_actor = p.request.for_actor();
    w->state = for_actor ? WorkerState::kActor : WorkerState::kLeased;
    w->lease_id = lease_id;
    leases_.emplace(lease_id, Lease{w->id, *p.allocation, for_actor});
    p.reply.set_granted(true);
    p.reply.set_lease_id(lease_id);
    p.reply.set_worker_address(w->address);
    p.reply.set_worker_id(w->id.binary());
    p.reply.set_worker_pid(w->pid);
    p.reply.set_node_id(config_.node_id.binary());
    for (int g : gpu_ids) p.reply.add_gpu_ids(g);
    p.done = true;
    it = pending_.erase(it);
  }
  cv_.notify_all();
}

grpc::Status NodeAgent::RequestLease(grpc::ServerContext* ctx, const proto::LeaseRequest* req,
                                     proto::LeaseReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  ResourceSet request;
  try {
    request = from_proto(req->resources());
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INVALID_ARGUMENT, std::string("bad resource request: ") + e.what()};
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "node agent is stopping"};
  std::string why = resources_.infeasible_reason(request);
  if (!why.empty()) {
    *reply->mutable_error() = make_error(
        proto::ErrorInfo::INFEASIBLE,
        "cannot schedule " + req->description() + " with " + request.to_string() + ": it " + why +
            ", and no node of the cluster can ever satisfy it");
    return grpc::Status::OK;
  }
  auto pending = std::make_shared<PendingLease>();
  pending->request = *req;
  pending->resources = request;
  pending_.push_back(pending);
  try_grant_locked();
  while (!pending->done) {
    if (stopping_ || ctx->IsCancelled() || !last_start_failure_.empty()) {
      for (auto it = pending_.begin(); it != pending_.end(); ++it)
        if (*it == pending) {
          pending_.erase(it);
          break;
        }
      if (pending->allocation) resources_.release(*pending->allocation);
      if (!last_start_failure_.empty() && !stopping_) {
        *reply->mutable_error() = make_error(proto::ErrorInfo::INTERNAL, last_start_failure_);
        try_grant_locked();
        return grpc::Status::OK;
      }
      try_grant_locked();
      return {grpc::StatusCode::CANCELLED, "lease request cancelled"};
    }
    cv_.wait_for(lock, std::chrono::milliseconds(50));
  }
  *reply = pending->reply;
  return grpc::Status::OK;
}

void NodeAgent::release_lease_locked(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  Allocation allocation = it->second.allocation;
  auto w = workers_.find(it->second.worker_id);
  if (w != workers_.end() && w->second.blocked) {
    // Its CPUs were already lent back while it was blocked.
    allocation.resources.set(kCpu, FixedPoint());
    w->second.blocked = false;
  }
  resources_.release(allocation);
  leases_.erase(it);
}

grpc::Status NodeAgent::ReturnLease(grpc::ServerContext* ctx, const proto::ReturnLeaseRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = leases_.find(req->lease_id());
  if (it == leases_.end()) return grpc::Status::OK;  // the worker died and the lease went with it
  UniqueId worker_id = it->second.worker_id;
  release_lease_locked(req->lease_id());
  auto w = workers_.find(worker_id);
  if (w != workers_.end() && w->second.state != WorkerState::kDead) {
    if (req->worker_failed()) {
      w->second.state = WorkerState::kDead;
      pool_->signal(worker_id, SIGKILL);
    } else {
      w->second.state = WorkerState::kIdle;
      w->second.lease_id = 0;
    }
  }
  try_grant_locked();
  return grpc::Status::OK;
}

grpc::Status NodeAgent::RegisterWorker(grpc::ServerContext* ctx, const proto::RegisterWorkerRequest* req,
                                       proto::RegisterWorkerReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(UniqueId::from_binary(req->worker_id()));
  if (it == workers_.end() || it->second.state != WorkerState::kStarting)
    return {grpc::StatusCode::NOT_FOUND, "unknown worker"};
  it->second.pid = req->pid();
  it->second.address = req->address();
  it->second.state = WorkerState::kIdle;
  consecutive_start_failures_ = 0;
  last_start_failure_.clear();
  reply->set_node_id(config_.node_id.binary());
  try_grant_locked();
  return grpc::Status::OK;
}

grpc::Status NodeAgent::NotifyWorkerBlocked(grpc::ServerContext* ctx, const proto::WorkerBlocked* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  auto w = workers_.find(UniqueId::from_binary(req->worker_id()));
  if (w == workers_.end() || w->second.lease_id == 0) return grpc::Status::OK;
  auto lease = leases_.find(w->second.lease_id);
  if (lease == leases_.end() || w->second.blocked == req->blocked()) return grpc::Status::OK;
  ResourceSet cpus = cpu_part(lease->second.allocation.resources);
  if (cpus.empty()) return grpc::Status::OK;
  w->second.blocked = req->blocked();
  if (req->blocked()) {
    resources_.release(Allocation{cpus, {}});
    try_grant_locked();
  } else {
    // Take the CPUs back even if others hold them now: the node is briefly
    // oversubscribed rather than the unblocked task stalled.
    resources_.force_acquire(cpus);
  }
  return grpc::Status::OK;
}

void NodeAgent::on_worker_exit(const UniqueId& worker_id, pid_t pid, const std::string& reason) {
  bool was_actor = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return;
    Worker& w = it->second;
    if (w.state == WorkerState::kStarting && !stopping_) {
      if (++consecutive_start_failures_ >= kMaxStartFailures) {
        last_start_failure_ = "worker processes exit during start-up (last: pid " + std::to_string(pid) + " " +
                              reason + "); make sure main() calls gantry::init(argc, argv) before other work, "
                              "and see the worker logs in the session directory";
        GANTRY_LOG_ERROR("{}", last_start_failure_);
      }
    }
    // Its sockets outlive it when it was killed; nobody must find them later.
    if (w.address.rfind("unix:", 0) == 0) {
      ::unlink(w.address.c_str() + 5);
      ::unlink(task_socket_path(w.address).c_str());
    }
    was_actor = w.lease_id != 0 && leases_.count(w.lease_id) && leases_[w.lease_id].for_actor;
    if (w.lease_id != 0) release_lease_locked(w.lease_id);
    workers_.erase(it);
    if (stopping_) return;
    try_grant_locked();
  }
  if (was_actor) {
    proto::WorkerFailure failure;
    failure.set_worker_id(worker_id.binary());
    failure.set_node_id(config_.node_id.binary());
    failure.set_reason("actor process pid " + std::to_string(pid) + " " + reason);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    proto::Empty reply;
    grpc::Status s = head_->ReportWorkerFailure(&ctx, failure, &reply);
    if (!s.ok()) GANTRY_LOG_WARN("cannot report worker failure to the head: {}", s.error_message());
  }
}

grpc::Status NodeAgent::CreateObject(grpc::ServerContext* ctx, const proto::CreateObjectRequest* req,
                                     proto::CreateObjectReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId id = UniqueId::from_binary(req->id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "object id must be 16 bytes"};
  ObjectStore::Reservation r = store_->reserve(id, req->size());
  if (!r.error.empty()) *reply->mutable_error() = make_error(proto::ErrorInfo::OBJECT_STORE_FULL, r.error);
  reply->set_path(r.path);
  reply->set_reused(r.reused);
  return grpc::Status::OK;
}

grpc::Status NodeAgent::DeleteObjects(grpc::ServerContext* ctx, const proto::ObjectIds* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  for (const auto& raw : req->ids()) {
    UniqueId id = UniqueId::from_binary(raw);
    if (!id.is_nil()) store_->remove(id);
  }
  return grpc::Status::OK;
}

grpc::Status NodeAgent::KillWorker(grpc::ServerContext* ctx, const proto::KillWorkerRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  pool_->signal(UniqueId::from_binary(req->worker_id()), SIGKILL);
  return grpc::Status::OK;
}

grpc::Status NodeAgent::GetNodeStats(grpc::ServerContext* ctx, const proto::Empty*, proto::NodeStats* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  *reply->mutable_total() = to_proto(resources_.total());
  *reply->mutable_available() = to_proto(resources_.available());
  reply->set_store_used(store_->used());
  reply->set_store_capacity(store_->capacity());
  reply->set_num_gpus(config_.num_gpus);
  int idle = 0;
  for (const auto& [id, w] : workers_) idle += w.state == WorkerState::kIdle;
  reply->set_num_workers(static_cast<int>(workers_.size()));
  reply->set_num_idle_workers(idle);
  return grpc::Status::OK;
}

}  // namespace gantry::internal
