#include "agent/node_agent.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <thread>

#include "common/logging.h"
#include "common/sha256.h"
#include "gantry/errors.h"
#include "rpc/auth.h"
#include "rpc/frame_socket.h"
#include "rpc/grpc_util.h"
#include "runtime/process_env.h"

namespace gantry::internal {
namespace {

constexpr int kMaxStartFailures = 3;
constexpr auto kJobStopGrace = std::chrono::seconds(3);
// How often a lease request waiting for room here looks for another node with room.
constexpr auto kMoveWaitingLeaseAfter = std::chrono::milliseconds(500);

ResourceSet cpu_part(const ResourceSet& resources) {
  ResourceSet out;
  out.set(kCpu, resources.get(kCpu));
  return out;
}

}  // namespace

NodeAgent::NodeAgent(NodeAgentConfig config)
    : config_(std::move(config)), resources_(config_.total, config_.num_gpus), logs_(config_.logs_dir) {
  store_ = std::make_unique<ObjectStore>(config_.store_dir, config_.store_capacity);
  if (config_.physical_gpus && config_.num_gpus > 0) {
    gpu_monitor_ = std::make_unique<GpuMonitor>();
    if (!gpu_monitor_->available())
      GANTRY_LOG_INFO("GPU figures unavailable: {}", gpu_monitor_->unavailable_reason());
  }
  head_ = proto::Head::NewStub(make_channel(config_.head_address));
  view_ = std::make_unique<ClusterView>(head_, std::chrono::milliseconds(300));
  transfer_ = std::make_unique<ObjectTransfer>(*store_, *view_, channels_, config_.node_id);
  if (!config_.executable_dir.empty()) executables_ = std::make_unique<ExecutableStore>(config_.executable_dir);
  pool_ = std::make_unique<WorkerPool>(
      config_.worker_environment,
      [this](const UniqueId& id, pid_t pid, const std::string& reason) { on_worker_exit(id, pid, reason); });
}

NodeAgent::~NodeAgent() { stop(); }

void NodeAgent::start() {
  grpc::ServerBuilder builder;
  configure_server(builder);
  int port = 0;
  builder.AddListeningPort(config_.listen_address, server_credentials(config_.listen_address), &port);
  builder.RegisterService(this);
  server_ = builder.BuildAndStart();
  if (!server_ || (config_.listen_address.rfind("unix:", 0) != 0 && port == 0))
    throw Error("node agent cannot listen on " + config_.listen_address);
  if (config_.listen_address.size() > 2 &&
      config_.listen_address.compare(config_.listen_address.size() - 2, 2, ":0") == 0) {
    config_.listen_address.replace(config_.listen_address.size() - 1, 1, std::to_string(port));
    pool_->set_node_setting("GANTRY_AGENT_ADDRESS", config_.listen_address);
  }
  // A node of a TCP cluster: its workers serve on TCP too, so other nodes reach them.
  std::string host;
  int tcp_port = 0;
  if (split_host_port(config_.listen_address, &host, &tcp_port)) pool_->set_node_setting("GANTRY_NODE_IP", host);
  if (tcp_port > 0 && !tls_enabled()) {
    object_listener_ = FrameListener::tcp(host);
    object_accept_thread_ = std::thread([this] {
      while (auto socket = object_listener_->accept()) {
        int fd = socket->fd();
        {
          std::lock_guard<std::mutex> lock(mu_);
          object_readers_.insert(fd);
        }
        std::thread([this, fd, s = std::move(socket)]() mutable {
          transfer_->serve_socket(*s);
          std::lock_guard<std::mutex> lock(mu_);
          object_readers_.erase(fd);  // before the socket closes, so stop() never shuts a reused fd
          cv_.notify_all();
        }).detach();
      }
    });
  }

  proto::RegisterNodeRequest req;
  req.set_node_id(config_.node_id.binary());
  req.set_agent_address(config_.listen_address);
  *req.mutable_total() = to_proto(config_.total);
  req.set_num_gpus(config_.num_gpus);
  req.set_hostname(host_name());
  if (object_listener_) req.set_object_address(object_listener_->endpoint());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  proto::Empty reply;
  grpc::Status s = head_->RegisterNode(&ctx, req, &reply);
  if (!s.ok()) throw Error("node agent cannot register with the head at " + config_.head_address + ": " + s.error_message());

  if (config_.prestart_workers <= 0 || config_.prestart_job.is_nil()) return;
  if (std::string why = ensure_job(config_.prestart_job); !why.empty()) throw Error(why);
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < config_.prestart_workers; ++i) start_worker_locked(config_.prestart_job, {});
}

std::string NodeAgent::ensure_job(const UniqueId& job_id, bool finished_ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_jobs_.count(job_id) && !finished_ok) return "job " + job_id.hex() + " has finished";
    if (jobs_.count(job_id)) return {};
  }
  proto::JobRequest req;
  req.set_job_id(job_id.binary());
  proto::JobSpec job;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Status s = head_->GetJob(&ctx, req, &job);
  if (!s.ok()) return "cannot start workers for job " + job_id.hex() + ": the head says: " + s.error_message();
  if (job.state() == proto::JobSpec::FINISHED && !finished_ok) return "job " + job_id.hex() + " has finished";
  WorkerLaunchSpec spec;
  spec.executable = job.executable();
  spec.argv.assign(job.argv().begin(), job.argv().end());
  spec.environment.insert(job.environment().begin(), job.environment().end());
  spec.environment["GANTRY_JOB_ID"] = job_id.hex();
  if (!config_.allowed_executable_dirs.empty()) {
    std::error_code ec;
    std::string real = std::filesystem::weakly_canonical(spec.executable, ec).string();
    bool allowed = false;
    for (const auto& dir : config_.allowed_executable_dirs) {
      std::string root = std::filesystem::weakly_canonical(dir, ec).string();
      if (!root.empty() && real.rfind(root + "/", 0) == 0) allowed = true;
    }
    if (!allowed)
      return "node " + config_.node_id.short_hex() + " does not run " + spec.executable +
             ": it is outside the directories this node allows (--allowed-executables)";
  }
  const std::string where = "node " + config_.node_id.short_hex() + " (" + host_name() + ")";
  if (!job.exe_digest().empty()) {
    std::string why;
    spec.executable = local_executable(job, &why);
    if (spec.executable.empty()) return "cannot start workers for job " + job_id.hex() + " on " + where + ": " + why;
    std::vector<std::string> missing = missing_libraries(spec.executable);
    if (!missing.empty()) {
      std::string names;
      for (const auto& m : missing) names += (names.empty() ? "" : ", ") + m;
      return "cannot start workers for job " + job_id.hex() + " on " + where + ": its executable " +
             job.executable() + " needs shared libraries this node does not have: " + names +
             "; install them on that node (or link the program statically)";
    }
  } else if (::access(spec.executable.c_str(), X_OK) != 0) {
    return "cannot start workers for job " + job_id.hex() + " on " + where + ": its executable " + spec.executable +
           " is not there or not executable";
  }
  std::lock_guard<std::mutex> lock(mu_);
  jobs_.emplace(job_id, std::move(spec));
  return {};
}

void NodeAgent::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    cv_.notify_all();
  }
  if (object_listener_) {
    object_listener_->shutdown();
    if (object_accept_thread_.joinable()) object_accept_thread_.join();
    std::unique_lock<std::mutex> lock(mu_);
    // Shutting their sockets makes the readers' next send or receive fail at once.
    for (int fd : object_readers_) ::shutdown(fd, SHUT_RDWR);
    cv_.wait(lock, [this] { return object_readers_.empty(); });
  }
  if (pool_) pool_->stop_all(std::chrono::milliseconds(1000));
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  pool_.reset();
  if (server_) server_->Wait();
}

void NodeAgent::start_worker_locked(const UniqueId& job_id, const std::vector<int>& gpu_ids) {
  auto job = jobs_.find(job_id);
  if (job == jobs_.end()) throw Error("no launch spec for job " + job_id.hex());
  UniqueId id = pool_->start(job->second, gpu_ids);
  Worker w;
  w.id = id;
  w.job_id = job_id;
  w.gpu_ids = gpu_ids;
  workers_.emplace(id, std::move(w));
}

NodeAgent::Worker* NodeAgent::find_idle_worker_locked(const UniqueId& job_id, const std::vector<int>& gpu_ids) {
  for (auto& [id, w] : workers_)
    if (w.state == WorkerState::kIdle && w.job_id == job_id && w.gpu_ids == gpu_ids) return &w;
  return nullptr;
}

void NodeAgent::try_grant_locked() {
  if (stopping_) return;
  // Workers already starting, per job and GPU set, so one slow start-up does not start
  // a second process for the same waiting request.
  using Shape = std::pair<UniqueId, std::vector<int>>;
  std::map<Shape, int> starting, waiting;
  for (const auto& [id, w] : workers_)
    if (w.state == WorkerState::kStarting) ++starting[{w.job_id, w.gpu_ids}];

  for (auto it = pending_.begin(); it != pending_.end();) {
    PendingLease& p = **it;
    if (!p.allocation && !allocate_locked(p)) {
      ++it;
      continue;
    }
    std::vector<int> gpu_ids = p.allocation->gpu_ids();
    Shape shape{p.job_id, gpu_ids};
    Worker* w = find_idle_worker_locked(p.job_id, gpu_ids);
    if (w == nullptr) {
      if (++waiting[shape] > starting[shape]) {
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
          start_worker_locked(p.job_id, gpu_ids);
          ++starting[shape];
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
    w->detached = for_actor && p.request.detached();
    w->lease_id = lease_id;
    leases_.emplace(lease_id, Lease{w->id, *p.allocation, for_actor, p.bundle});
    p.reply.set_granted(true);
    p.reply.set_lease_id(lease_id);
    p.reply.set_worker_address(w->address);
    p.reply.set_task_address(w->task_address);
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
  UniqueId job_id = UniqueId::from_binary(req->job_id());
  if (job_id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "a lease request must name its job (16 bytes)"};
  if (!req->spilled() && !place_here(ctx, *req, request, reply)) return grpc::Status::OK;
  Placement placement = from_proto(req->strategy());
  if (std::string why = ensure_job(job_id, req->detached()); !why.empty()) {
    *reply->mutable_error() = make_error(proto::ErrorInfo::INTERNAL, why);
    reply->set_job_refused(true);
    return grpc::Status::OK;
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "node agent is stopping"};
  if (placement.kind == Placement::Kind::kPlacementGroup) {
    if (std::string why = bundle_infeasible_locked(placement, request); !why.empty()) {
      *reply->mutable_error() = make_error(proto::ErrorInfo::INFEASIBLE, "cannot schedule " + req->description() +
                                                                             " with " + request.to_string() + ": it " + why);
      return grpc::Status::OK;
    }
  } else if (std::string why = resources_.infeasible_reason(request); !why.empty()) {
    *reply->mutable_error() = make_error(
        proto::ErrorInfo::INFEASIBLE,
        "cannot schedule " + req->description() + " with " + request.to_string() + ": it " + why +
            ", and no node of the cluster can ever satisfy it");
    return grpc::Status::OK;
  }
  auto pending = std::make_shared<PendingLease>();
  pending->request = *req;
  pending->job_id = job_id;
  pending->resources = request;
  pending->placement = placement;
  pending_.push_back(pending);
  try_grant_locked();
  auto forget_pending_locked = [&] {
    for (auto it = pending_.begin(); it != pending_.end(); ++it)
      if (*it == pending) {
        pending_.erase(it);
        break;
      }
  };
  // A default request placed here waits for room here; should another node have room
  // meanwhile (it joined, or its work finished), it moves there. Not a spilled request
  // (its sender chose this node), nor one a worker is starting for.
  const bool may_move = !req->spilled() && !req->for_actor() && placement.kind == Placement::Kind::kDefault;
  auto next_look = std::chrono::steady_clock::now() + kMoveWaitingLeaseAfter;
  while (!pending->done) {
    if (stopping_ || ctx->IsCancelled() || !last_start_failure_.empty()) {
      forget_pending_locked();
      if (pending->allocation) give_back_locked(pending->bundle, *pending->allocation);
      if (!last_start_failure_.empty() && !stopping_) {
        *reply->mutable_error() = make_error(proto::ErrorInfo::INTERNAL, last_start_failure_);
        try_grant_locked();
        return grpc::Status::OK;
      }
      try_grant_locked();
      return {grpc::StatusCode::CANCELLED, "lease request cancelled"};
    }
    cv_.wait_for(lock, std::chrono::milliseconds(50));
    if (may_move && !pending->done && !pending->allocation && std::chrono::steady_clock::now() >= next_look) {
      next_look = std::chrono::steady_clock::now() + kMoveWaitingLeaseAfter;
      lock.unlock();
      std::string error;
      proto::LeaseReply moved;
      std::optional<bool> here = place_on(*req, request, placement, view_->nodes(&error, false), &moved, false);
      lock.lock();
      if (here && !*here && !moved.spillback_address().empty() && !pending->done && !pending->allocation) {
        GANTRY_LOG_DEBUG("{} waited here; node {} has room now", req->description(),
                         UniqueId::from_binary(moved.spillback_node_id()).short_hex());
        forget_pending_locked();
        *reply = std::move(moved);
        return grpc::Status::OK;
      }
    }
  }
  *reply = pending->reply;
  return grpc::Status::OK;
}

bool NodeAgent::place_here(grpc::ServerContext* ctx, const proto::LeaseRequest& req, const ResourceSet& request,
                           proto::LeaseReply* reply) {
  Placement placement = from_proto(req.strategy());
  if (placement.kind == Placement::Kind::kPlacementGroup) return place_in_group(ctx, req, request, placement, reply);
  {
    // The common case needs no one else: default placement that fits here now.
    std::lock_guard<std::mutex> lock(mu_);
    if (placement.kind == Placement::Kind::kDefault && resources_.available().contains(request)) return true;
  }
  std::string error;
  // A request nothing in our copy can hold asks the head again: a node may have joined
  // since. So does one that would wait here for room: a node that joined since may have
  // it now.
  for (bool fresh : {false, true}) {
    std::vector<ClusterView::Node> nodes = view_->nodes(&error, fresh);
    std::optional<bool> here = place_on(req, request, placement, nodes, reply, /*last_try=*/fresh);
    if (!here) continue;
    if (*here && !fresh && placement.kind == Placement::Kind::kDefault) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!resources_.available().contains(request)) continue;
    }
    if (reply->has_error() && !error.empty())
      reply->mutable_error()->set_message(reply->error().message() + " (" + error + ")");
    return *here;
  }
  return false;
}

std::optional<bool> NodeAgent::place_on(const proto::LeaseRequest& req, const ResourceSet& request,
                                        const Placement& placement, const std::vector<ClusterView::Node>& nodes,
                                        proto::LeaseReply* reply, bool last_try) {
  std::vector<NodeCandidate> candidates;
  int local = -1;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& n : nodes) {
    NodeCandidate c;
    c.id = n.id;
    c.shape = n.shape.get();
    c.available = n.available;
    c.alive = n.alive && n.id != UniqueId::from_binary(req.unreachable_node_id());
    if (n.id == config_.node_id) {
      // Our own figures are live; the head's are a health check old.
      local = static_cast<int>(candidates.size());
      c.shape = &resources_;
      c.available = resources_.available();
      c.alive = true;
    }
    candidates.push_back(std::move(c));
  }
  if (local < 0) {  // not in the head's table (yet): count ourselves anyway
    NodeCandidate self;
    self.id = config_.node_id;
    self.shape = &resources_;
    self.available = resources_.available();
    local = static_cast<int>(candidates.size());
    candidates.push_back(std::move(self));
  }
  NodeChoice choice = choose_node(candidates, request, placement, local, &spread_cursor_);
  if (choice.index == local) return true;
  if (choice.index < 0) {
    if (!last_try) return std::nullopt;
    std::string message = "cannot schedule " + req.description() + " with " + request.to_string() + ": it " +
                          choice.why;
    if (placement.kind != Placement::Kind::kNodeAffinity) message += ", and no node of the cluster can ever satisfy it";
    *reply->mutable_error() = make_error(proto::ErrorInfo::INFEASIBLE, message);
    return false;
  }
  const ClusterView::Node& target = nodes[static_cast<size_t>(choice.index)];
  view_->charge(target.id, request);
  reply->set_spillback_address(target.agent_address);
  reply->set_spillback_node_id(target.id.binary());
  return false;
}

void NodeAgent::release_lease_locked(uint64_t lease_id) {
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  Allocation allocation = it->second.allocation;
  auto w = workers_.find(it->second.worker_id);
  if (it->second.bundle) {
    // Leases in a bundle lend nothing while blocked (see NotifyWorkerBlocked).
    give_back_locked(it->second.bundle, allocation);
    leases_.erase(it);
    return;
  }
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
  it->second.task_address = req->task_address();
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
  // A bundle's CPUs are the group's: lending them to the node would break its reservation.
  if (lease->second.bundle) return grpc::Status::OK;
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
    cv_.notify_all();
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

grpc::Status NodeAgent::DeleteObjects(grpc::ServerContext* ctx, const proto::DeleteObjectsRequest* req,
                                      proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  // Other nodes to tell: the holders of objects made elsewhere (their owner only talks to
  // us), and the nodes that copied objects of ours.
  std::unordered_map<UniqueId, proto::DeleteObjectsRequest> elsewhere;
  std::vector<ObjectId> removed_here;
  for (int i = 0; i < req->ids_size(); ++i) {
    UniqueId id = UniqueId::from_binary(req->ids(i));
    if (id.is_nil()) continue;
    store_->remove(id);  // the object, or the copy this node pulled of it
    removed_here.push_back(id);
    const std::string& holder = i < req->holder_nodes_size() ? req->holder_nodes(i) : std::string();
    if (holder.empty() || holder == config_.node_id.hex()) continue;
    try {
      elsewhere[UniqueId::from_hex(holder)].add_ids(req->ids(i));
    } catch (const std::exception&) {
      // Not a node id: there is nothing to free elsewhere.
    }
  }
  for (auto& [reader, ids] : transfer_->take_copies(removed_here))
    for (const ObjectId& id : ids) elsewhere[reader].add_ids(id.binary());
  for (auto& [node_id, forward] : elsewhere) {
    std::optional<ClusterView::Node> node = view_->find(node_id);
    if (!node || !node->alive || node_id == config_.node_id) continue;  // a dead node's store went with it
    auto stub = proto::NodeAgent::NewStub(channels_.get(node->agent_address));
    send_and_forget<proto::Empty>(std::move(forward), std::chrono::seconds(5),
                                  [&](auto... call) { stub->async()->DeleteObjects(call...); });
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
  grpc::Status status = fill_node_tables(reply);
  add_host_figures(reply);  // reads /proc and NVML: outside the agent's lock
  return status;
}

grpc::Status NodeAgent::fill_node_tables(proto::NodeStats* reply) {
  std::lock_guard<std::mutex> lock(mu_);
  *reply->mutable_total() = to_proto(resources_.total());
  *reply->mutable_available() = to_proto(resources_.available());
  reply->set_store_used(store_->used());
  reply->set_store_capacity(store_->capacity());
  reply->set_num_gpus(config_.num_gpus);
  int idle = 0;
  for (const auto& [id, w] : workers_) {
    idle += w.state == WorkerState::kIdle;
    if (!w.address.empty() && w.state != WorkerState::kDead) reply->add_worker_addresses(w.address);
  }
  reply->set_num_workers(static_cast<int>(workers_.size()));
  reply->set_num_idle_workers(idle);
  for (const auto& p : pending_) *reply->add_pending_demand() = to_proto(p->resources);
  reply->set_node_id(config_.node_id.binary());
  reply->set_hostname(host_name());
  reply->set_store_objects(store_->num_objects());
  reply->set_store_evicted(store_->num_evicted());
  std::vector<bool> gpu_in_use(static_cast<size_t>(std::max(config_.num_gpus, 0)), false);
  for (const auto& [id, w] : workers_) {
    if (!w.address.empty() && w.state != WorkerState::kDead) reply->add_worker_pids(w.pid);
    if (w.state == WorkerState::kLeased || w.state == WorkerState::kActor)
      for (int g : w.gpu_ids)
        if (g >= 0 && static_cast<size_t>(g) < gpu_in_use.size()) gpu_in_use[static_cast<size_t>(g)] = true;
  }
  for (int g = 0; g < config_.num_gpus; ++g) {
    proto::GpuStats* gpu = reply->add_gpus();
    gpu->set_index(g);
    gpu->set_logical(!config_.physical_gpus);
    gpu->set_name(config_.physical_gpus ? "GPU" : "logical GPU");
    gpu->set_utilization(-1);
    gpu->set_in_use(gpu_in_use[static_cast<size_t>(g)]);
  }
  return grpc::Status::OK;
}

void NodeAgent::add_host_figures(proto::NodeStats* reply) {
  HostSample host = host_.sample();
  reply->set_cpu_utilization(host.cpu_utilization);
  reply->set_cpu_cores(host.cpu_cores);
  reply->set_memory_used(host.memory_used);
  reply->set_memory_total(host.memory_total);
  if (!gpu_monitor_ || !gpu_monitor_->available() || reply->gpus_size() == 0) return;
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  std::vector<GpuSample> samples = gpu_monitor_->sample(node_gpu_devices(reply->gpus_size(), visible ? visible : ""));
  for (int g = 0; g < reply->gpus_size() && static_cast<size_t>(g) < samples.size(); ++g) {
    proto::GpuStats* gpu = reply->mutable_gpus(g);
    const GpuSample& s = samples[static_cast<size_t>(g)];
    if (!s.name.empty()) gpu->set_name(s.name);
    gpu->set_utilization(s.utilization);
    gpu->set_memory_used(s.memory_used);
    gpu->set_memory_total(s.memory_total);
  }
}

grpc::Status NodeAgent::ListLogs(grpc::ServerContext* ctx, const proto::Empty*, proto::ListLogsReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  *reply = logs_.list();
  return grpc::Status::OK;
}

grpc::Status NodeAgent::ReadLog(grpc::ServerContext* ctx, const proto::ReadLogRequest* req, proto::ReadLogReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::string error;
  if (!logs_.read(*req, reply, &error)) return {grpc::StatusCode::INVALID_ARGUMENT, error};
  return grpc::Status::OK;
}

grpc::Status NodeAgent::GetStacks(grpc::ServerContext* ctx, const proto::StacksRequest* req, proto::StacksReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool ours = false;
    for (const auto& [id, w] : workers_) ours |= w.pid == req->pid() && w.state != WorkerState::kDead;
    if (!ours)
      return {grpc::StatusCode::NOT_FOUND, "pid " + std::to_string(req->pid()) + " is not a worker of this node"};
  }
  try {
    *reply = thread_stacks(req->pid());
  } catch (const std::exception& e) {
    return {grpc::StatusCode::FAILED_PRECONDITION, e.what()};
  }
  return grpc::Status::OK;
}

grpc::Status NodeAgent::PullObject(grpc::ServerContext* ctx, const proto::PullObjectRequest* req,
                                   proto::PullObjectReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  *reply = transfer_->pull(req->location());
  return grpc::Status::OK;
}

grpc::Status NodeAgent::ReadObject(grpc::ServerContext* ctx, const proto::ReadObjectRequest* req,
                                   grpc::ServerWriter<proto::ObjectChunk>* writer) {
  GANTRY_REQUIRE_TOKEN(ctx);
  return transfer_->serve_read(ctx, *req, writer);
}

grpc::Status NodeAgent::JobFinished(grpc::ServerContext* ctx, const proto::JobRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId job_id = UniqueId::from_binary(req->job_id());
  if (job_id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "job id must be 16 bytes"};
  std::unique_lock<std::mutex> lock(mu_);
  jobs_.erase(job_id);
  finished_jobs_.insert(job_id);
  // SIGTERM first: a worker then sends the driver the output it still holds, and exits.
  // Detached actors stay.
  std::vector<UniqueId> stopping;
  for (auto& [id, w] : workers_)
    if (w.job_id == job_id && w.state != WorkerState::kDead && !w.detached) {
      pool_->signal(id, SIGTERM);
      stopping.push_back(id);
    }
  // Requests of the job still waiting get nothing now.
  for (auto& p : pending_)
    if (p->job_id == job_id && !p->done) {
      if (p->allocation) give_back_locked(p->bundle, *p->allocation);
      p->allocation.reset();
      *p->reply.mutable_error() = make_error(proto::ErrorInfo::INTERNAL, "job " + job_id.hex() + " has finished");
      p->done = true;
    }
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [](const auto& p) { return p->done; }),
                 pending_.end());
  cv_.notify_all();
  // Reply once they are gone (the driver keeps serving until then), killing stragglers.
  auto gone = [&] {
    for (const auto& id : stopping)
      if (workers_.count(id)) return false;
    return true;
  };
  if (!cv_.wait_for(lock, kJobStopGrace, gone)) {
    for (const auto& id : stopping)
      if (workers_.count(id)) pool_->signal(id, SIGKILL);
  }
  GANTRY_LOG_INFO("job {} finished: stopped {} worker(s)", job_id.short_hex(), stopping.size());
  return grpc::Status::OK;
}

bool NodeAgent::place_in_group(grpc::ServerContext* ctx, const proto::LeaseRequest& req, const ResourceSet& request,
                               const Placement& placement, proto::LeaseReply* reply) {
  const std::string group = "placement group " + placement.group.hex();
  auto fail = [&](proto::ErrorInfo::Kind kind, const std::string& why) {
    *reply->mutable_error() =
        make_error(kind, "cannot schedule " + req.description() + " with " + request.to_string() + " in " + group + ": " + why);
    return false;
  };
  proto::GetPlacementGroupReply found;
  while (true) {
    // A group that is still being placed holds its work here until it is created.
    proto::PlacementGroupRequest ask;
    ask.set_group_id(placement.group.binary());
    ask.set_wait(true);
    ask.set_timeout_ms(1000);
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    found.Clear();
    grpc::Status s = head_->GetPlacementGroup(&c, ask, &found);
    if (!s.ok()) return fail(proto::ErrorInfo::INTERNAL, "the head cannot be asked about it: " + s.error_message());
    if (!found.found()) return fail(proto::ErrorInfo::INFEASIBLE, "there is no such group");
    auto state = found.info().state();
    if (state == proto::PlacementGroupInfo::REMOVED) return fail(proto::ErrorInfo::INFEASIBLE, "the group was removed");
    if (state == proto::PlacementGroupInfo::CREATED) break;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return fail(proto::ErrorInfo::INTERNAL, "the node agent is stopping");
    }
    if (ctx->IsCancelled()) return fail(proto::ErrorInfo::INTERNAL, "the request was cancelled");
  }
  const proto::PlacementGroupInfo& info = found.info();
  int n = info.spec().bundles_size();
  if (placement.bundle >= n)
    return fail(proto::ErrorInfo::INFEASIBLE, "it asks for bundle " + std::to_string(placement.bundle) +
                                                  " but the group has " + std::to_string(n));
  std::string held;
  std::vector<int> fitting = bundles_holding(info.spec(), placement.bundle, request, &held);
  std::erase_if(fitting, [&](int i) { return i >= info.bundle_node_ids_size(); });
  if (fitting.empty())
    return fail(proto::ErrorInfo::INFEASIBLE, placement.bundle >= 0
                                                  ? "bundle " + std::to_string(placement.bundle) + " holds only " + held
                                                  : "no bundle holds that much (they hold " + held + ")");
  for (int i : fitting)
    if (UniqueId::from_binary(info.bundle_node_ids(i)) == config_.node_id) return true;
  int chosen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    chosen = fitting[spread_cursor_++ % fitting.size()];
  }
  reply->set_spillback_address(info.bundle_agent_addresses(chosen));
  reply->set_spillback_node_id(info.bundle_node_ids(chosen));
  return false;
}

bool NodeAgent::allocate_locked(PendingLease& p) {
  if (p.placement.kind != Placement::Kind::kPlacementGroup) {
    p.allocation = resources_.allocate(p.resources);
    return p.allocation.has_value();
  }
  for (auto& [key, ledger] : bundles_) {
    if (key.first != p.placement.group || (p.placement.bundle >= 0 && key.second != p.placement.bundle)) continue;
    if (std::optional<Allocation> a = ledger.allocate(p.resources)) {
      p.allocation = std::move(a);
      p.bundle = key;
      return true;
    }
  }
  return false;
}

void NodeAgent::give_back_locked(const std::optional<BundleKey>& bundle, const Allocation& allocation) {
  if (!bundle) {
    resources_.release(allocation);
    return;
  }
  // A removed bundle took its whole reservation back already.
  auto it = bundles_.find(*bundle);
  if (it != bundles_.end()) it->second.release(allocation);
}

std::string NodeAgent::bundle_infeasible_locked(const Placement& placement, const ResourceSet& request) const {
  std::string why;
  for (const auto& [key, ledger] : bundles_) {
    if (key.first != placement.group || (placement.bundle >= 0 && key.second != placement.bundle)) continue;
    why = ledger.infeasible_reason(request);
    if (why.empty()) return {};
  }
  if (why.empty())
    return "finds no " + (placement.bundle >= 0 ? "bundle " + std::to_string(placement.bundle) : std::string("bundle")) +
           " of placement group " + placement.group.hex() + " on node " + config_.node_id.short_hex() +
           " (the group was removed, or moved after a node died)";
  return why;
}

grpc::Status NodeAgent::ReserveBundles(grpc::ServerContext* ctx, const proto::ReserveBundlesRequest* req,
                                       proto::ReserveBundlesReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId group = UniqueId::from_binary(req->group_id());
  if (group.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "placement group id must be 16 bytes"};
  if (req->bundle_indexes_size() != req->bundles_size())
    return {grpc::StatusCode::INVALID_ARGUMENT, "a bundle index is needed for every bundle"};
  std::vector<ResourceSet> wanted;
  try {
    for (const auto& b : req->bundles()) wanted.push_back(from_proto(b));
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INVALID_ARGUMENT, std::string("bad bundle resources: ") + e.what()};
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "node agent is stopping"};
  // All or nothing: on the first bundle that does not fit, give back what was taken.
  std::vector<std::pair<BundleKey, Allocation>> taken;
  for (int i = 0; i < req->bundle_indexes_size(); ++i) {
    BundleKey key{group, req->bundle_indexes(i)};
    if (key.second < 0) return {grpc::StatusCode::INVALID_ARGUMENT, "bundle indexes must not be negative"};
    if (bundles_.count(key)) continue;  // reserved by an earlier try of the same request
    std::optional<Allocation> a = resources_.allocate(wanted[static_cast<size_t>(i)]);
    if (!a) {
      for (const auto& [k, allocation] : taken) resources_.release(allocation);
      reply->set_reserved(false);
      reply->set_reason("node " + config_.node_id.short_hex() + " has no room for bundle " +
                        std::to_string(key.second) + " " + wanted[static_cast<size_t>(i)].to_string() +
                        " now (free: " + resources_.available().to_string() + ")");
      return grpc::Status::OK;
    }
    taken.emplace_back(key, std::move(*a));
  }
  for (auto& [key, allocation] : taken) bundles_.emplace(key, BundleLedger(std::move(allocation)));
  reply->set_reserved(true);
  GANTRY_LOG_INFO("reserved {} bundle(s) of placement group {}", taken.size(), group.short_hex());
  return grpc::Status::OK;
}

grpc::Status NodeAgent::ReleaseBundles(grpc::ServerContext* ctx, const proto::ReleaseBundlesRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId group = UniqueId::from_binary(req->group_id());
  std::unordered_set<int> only(req->bundle_indexes().begin(), req->bundle_indexes().end());
  auto selected = [&](const BundleKey& key) { return key.first == group && (only.empty() || only.count(key.second)); };
  std::lock_guard<std::mutex> lock(mu_);
  // Work waiting for the group's bundles gets nothing now (a partial release undoes a
  // failed reservation, which no work can have seen).
  for (auto& p : pending_)
    if (req->bundle_indexes().empty() && !p->done && p->placement.kind == Placement::Kind::kPlacementGroup &&
        p->placement.group == group) {
      if (p->allocation) give_back_locked(p->bundle, *p->allocation);
      p->allocation.reset();
      *p->reply.mutable_error() = make_error(
          proto::ErrorInfo::INFEASIBLE, "cannot schedule " + p->request.description() + ": placement group " +
                                            group.hex() + (req->reason().empty() ? " was removed" : " " + req->reason()));
      p->done = true;
    }
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [](const auto& p) { return p->done; }),
                 pending_.end());
  // Work running in the group stops; its leases die with it.
  int stopped = 0;
  for (const auto& [lease_id, lease] : leases_) {
    if (!lease.bundle || !selected(*lease.bundle)) continue;
    auto w = workers_.find(lease.worker_id);
    if (w == workers_.end() || w->second.state == WorkerState::kDead) continue;
    w->second.state = WorkerState::kDead;
    pool_->signal(w->first, SIGKILL);
    ++stopped;
  }
  int released = 0;
  for (auto it = bundles_.begin(); it != bundles_.end();) {
    if (!selected(it->first)) {
      ++it;
      continue;
    }
    resources_.release(it->second.reserved());
    it = bundles_.erase(it);
    ++released;
  }
  if (released > 0)
    GANTRY_LOG_INFO("released {} bundle(s) of placement group {}, stopping {} worker(s) in them", released,
                    group.short_hex(), stopped);
  cv_.notify_all();
  try_grant_locked();
  return grpc::Status::OK;
}

std::string NodeAgent::local_executable(const proto::JobSpec& job, std::string* why) {
  const std::string& digest = job.exe_digest();
  if (!ExecutableStore::valid_digest(digest)) {
    *why = "the job's executable digest is malformed";
    return {};
  }
  // The job's own path, when it holds the very same program (the usual case on the
  // driver's machine and on nodes sharing its file system).
  struct stat st{};
  if (::access(job.executable().c_str(), X_OK) == 0 && ::stat(job.executable().c_str(), &st) == 0) {
    KnownFile file{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
                   static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, {}};
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto known = known_files_.find(job.executable());
      if (known != known_files_.end() && known->second.device == file.device && known->second.inode == file.inode &&
          known->second.size == file.size && known->second.mtime_ns == file.mtime_ns)
        file.digest = known->second.digest;
    }
    if (file.digest.empty()) {
      std::string error;
      file.digest = sha256_file(job.executable(), nullptr, &error);
      std::lock_guard<std::mutex> lock(mu_);
      known_files_[job.executable()] = file;
    }
    if (file.digest == digest) return job.executable();
  }
  if (!executables_) {
    *why = "its executable " + job.executable() + " is not on this node, and the node keeps no fetched copies";
    return {};
  }
  if (executables_->has(digest)) return executables_->path_of(digest);
  auto started = std::chrono::steady_clock::now();
  proto::ExecutableRef ref;
  ref.set_digest(digest);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  auto reader = head_->GetExecutable(&ctx, ref);
  proto::ExecutableChunk chunk;
  std::unique_ptr<ExecutableStore::Writer> writer;
  while (reader->Read(&chunk)) {
    if (!writer) {
      try {
        writer = executables_->begin(digest, chunk.size());
      } catch (const std::exception& e) {
        ctx.TryCancel();
        reader->Finish();
        *why = e.what();
        return {};
      }
    }
    if (!writer->append(chunk.data().data(), chunk.data().size())) {
      ctx.TryCancel();
      reader->Finish();
      *why = "cannot keep the fetched executable: " + writer->error();
      return {};
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok() || !writer) {
    *why = "its executable " + job.executable() + " is not on this node and cannot be fetched from the head: " +
           (s.ok() ? std::string("nothing came") : s.error_message());
    return {};
  }
  if (std::string error = writer->commit(); !error.empty()) {
    *why = "the executable fetched from the head is broken: " + error;
    return {};
  }
  GANTRY_LOG_INFO("fetched executable {} ({:.1f} MiB, sha256 {}) from the head in {} ms", job.executable(),
                  static_cast<double>(job.exe_size()) / (1024.0 * 1024.0), digest.substr(0, 12),
                  std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
  return executables_->path_of(digest);
}

std::vector<std::string> NodeAgent::missing_libraries(const std::string& path) {
  std::vector<std::string> missing;
  // ldd prints "libfoo.so.1 => not found" for each library the loader cannot find.
  std::string command = "LC_ALL=C ldd '" + path + "' 2>/dev/null";
  if (path.find('\'') != std::string::npos) return missing;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return missing;
  char line[4096];
  while (std::fgets(line, sizeof line, p) != nullptr) {
    std::string text(line);
    if (text.find("=> not found") == std::string::npos) continue;
    size_t begin = text.find_first_not_of(" \t");
    size_t end = text.find(' ', begin);
    if (begin != std::string::npos) missing.push_back(text.substr(begin, end - begin));
  }
  ::pclose(p);
  return missing;
}

}  // namespace gantry::internal
