#include "head/head_service.h"

#include <algorithm>

#include <chrono>

#include "common/logging.h"
#include "rpc/auth.h"
#include "gantry/errors.h"

namespace gantry::internal {
namespace {

struct LeaseCall {
  grpc::ClientContext ctx;
  proto::LeaseRequest request;
  proto::LeaseReply reply;
};

struct CreateCall {
  grpc::ClientContext ctx;
  proto::CreateActorRequest request;
  proto::CreateActorReply reply;
};

std::string actor_label(const proto::ActorSpec& spec) {
  std::string label = spec.class_name();
  if (!spec.name().empty()) label += " '" + spec.name() + "'";
  return label + " " + ActorId::from_binary(spec.actor_id()).short_hex();
}

}  // namespace

HeadService::HeadService(std::string listen_address, HealthCheckConfig health)
    : address_(std::move(listen_address)), health_(health) {}

HeadService::~HeadService() { stop(); }

void HeadService::start() {
  grpc::ServerBuilder builder;
  configure_server(builder);
  builder.AddListeningPort(address_, server_credentials(address_));
  builder.RegisterService(this);
  for (grpc::Service* service : extra_services_) builder.RegisterService(service);
  server_ = builder.BuildAndStart();
  if (!server_) throw Error("head cannot listen on " + address_);
  if (health_.enabled) health_thread_ = std::thread([this] { health_loop(); });
  group_thread_ = std::thread([this] { group_loop(); });
}

void HeadService::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && calls_in_flight_ == 0 && !server_) return;
    stopping_ = true;
    cv_.notify_all();
  }
  // No new health probes or group placements after this.
  if (health_thread_.joinable()) health_thread_.join();
  if (group_thread_.joinable()) group_thread_.join();
  {
    // Placement and probe callbacks reference `this`; wait for them (their calls fail
    // fast once the agents are gone).
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(5), [this] { return calls_in_flight_ == 0; });
  }
  stop_kv_waits();
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    server_->Wait();
    server_.reset();
  }
}

grpc::Status HeadService::RegisterNode(grpc::ServerContext* ctx, const proto::RegisterNodeRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId id = UniqueId::from_binary(req->node_id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "node id must be 16 bytes"};
  Node node;
  node.id = id;
  node.agent_address = req->agent_address();
  node.object_address = req->object_address();
  node.hostname = req->hostname();
  node.num_gpus = req->num_gpus();
  if (node.agent_address.empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "a node must give its agent's address"};
  try {
    node.shape = std::make_unique<NodeResources>(from_proto(req->total()), req->num_gpus());
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INVALID_ARGUMENT, std::string("bad node resources: ") + e.what()};
  }
  node.agent = proto::NodeAgent::NewStub(channels_.get(node.agent_address));
  std::lock_guard<std::mutex> lock(mu_);
  GANTRY_LOG_INFO("node {} registered at {} with {}", id.short_hex(), node.agent_address,
                  node.shape->total().to_string());
  node.registered = next_registration_++;
  node.alive = true;
  node.available = node.shape->total();
  node.last_seen = std::chrono::steady_clock::now();
  nodes_[id] = std::move(node);
  groups_changed_ = true;  // a group waiting for room may fit now
  cv_.notify_all();
  return grpc::Status::OK;
}

const HeadService::Node* HeadService::pick_node_locked(const ResourceSet& resources,
                                                       const proto::SchedulingStrategy& strategy,
                                                       std::string* reason, bool take,
                                                       const std::set<UniqueId>* excluded) {
  // Candidates in registration order: actors pack onto the earliest nodes (the head's
  // own first) while they have room.
  std::vector<const Node*> order = nodes_in_order_locked();
  std::vector<NodeCandidate> candidates;
  for (const Node* node : order)
    candidates.push_back({node->id, node->shape.get(), node->available,
                          node->alive && (excluded == nullptr || excluded->count(node->id) == 0)});
  Placement placement = from_proto(strategy);
  uint64_t scratch_cursor = spread_cursor_;
  NodeChoice choice = choose_node(candidates, resources, placement, /*local=*/-1, take ? &spread_cursor_ : &scratch_cursor);
  if (choice.index < 0) {
    *reason = choice.why;
    return nullptr;
  }
  if (!take) return order[static_cast<size_t>(choice.index)];
  // Until the next health check, count it as taken there.
  Node* chosen = &nodes_.at(order[static_cast<size_t>(choice.index)]->id);
  if (chosen->available.contains(resources)) chosen->available -= resources;
  return chosen;
}

grpc::Status HeadService::CreateActor(grpc::ServerContext* ctx, const proto::ActorSpec* spec,
                                      proto::CreateActorRegistration* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  ActorId id = ActorId::from_binary(spec->actor_id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "actor id must be 16 bytes"};
  ResourceSet resources;
  try {
    resources = from_proto(spec->resources());
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INVALID_ARGUMENT, std::string("bad resources: ") + e.what()};
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "head is stopping"};
  if (actors_.count(id)) return {grpc::StatusCode::ALREADY_EXISTS, "actor id already registered"};
  if (!spec->name().empty()) {
    auto named = named_actors_.find(spec->name());
    if (named != named_actors_.end()) {
      *reply->mutable_error() = make_error(proto::ErrorInfo::INTERNAL,
                                           "an actor named '" + spec->name() + "' already exists; pick another "
                                           "name, or kill it first, or look it up with gantry::get_actor");
      return grpc::Status::OK;
    }
  }
  std::string why;
  if (spec->strategy().kind() == proto::SchedulingStrategy::PLACEMENT_GROUP) {
    bool wait = false;
    int bundle = -1;
    if (pick_bundle_node_locked(resources, spec->strategy(), &why, &wait, &bundle, /*take=*/false) == nullptr && !wait) {
      *reply->mutable_error() = make_error(proto::ErrorInfo::INFEASIBLE, "cannot place actor " + actor_label(*spec) +
                                                                              " with " + resources.to_string() + ": it " + why);
      return grpc::Status::OK;
    }
  } else if (pick_node_locked(resources, spec->strategy(), &why, /*take=*/false) == nullptr) {
    std::string message = "cannot place actor " + actor_label(*spec) + " with " + resources.to_string() + ": it " + why;
    if (spec->strategy().kind() != proto::SchedulingStrategy::NODE_AFFINITY)
      message += ", and no node of the cluster can ever satisfy it";
    *reply->mutable_error() = make_error(proto::ErrorInfo::INFEASIBLE, message);
    return grpc::Status::OK;
  }
  Actor& actor = actors_[id];
  actor.spec = *spec;
  actor.info.set_actor_id(spec->actor_id());
  actor.info.set_state(proto::ActorInfo::PENDING);
  actor.info.set_class_name(spec->class_name());
  actor.info.set_name(spec->name());
  actor.info.set_max_task_retries(spec->max_task_retries());
  actor.info.set_detached(spec->detached());
  if (!spec->name().empty()) named_actors_[spec->name()] = id;
  auto start = place_actor_locked(actor);
  lock.unlock();
  if (start) start();
  reply->set_ok(true);
  return grpc::Status::OK;
}

std::function<void()> HeadService::place_actor_locked(Actor& actor) {
  std::string why;
  ResourceSet resources = from_proto(actor.spec.resources());
  proto::SchedulingStrategy strategy = actor.spec.strategy();
  const Node* node = nullptr;
  actor.waiting_for_group = false;
  if (strategy.kind() == proto::SchedulingStrategy::PLACEMENT_GROUP) {
    bool wait = false;
    int bundle = -1;
    node = pick_bundle_node_locked(resources, strategy, &why, &wait, &bundle, /*take=*/true);
    if (wait) {
      actor.waiting_for_group = true;  // placed when the group is created (place_waiting_groups)
      return {};
    }
    strategy.set_bundle_index(bundle);
  } else {
    actor.waiting_for_room = false;
    node = pick_node_locked(resources, strategy, &why, /*take=*/false, &actor.refused_by);
    bool hard_affinity = strategy.kind() == proto::SchedulingStrategy::NODE_AFFINITY && !strategy.soft();
    if (node != nullptr && health_.enabled && !hard_affinity && !node->available.contains(resources)) {
      // No node has room as far as the last health checks show. An actor holds its
      // resources for life, so one sent to a busy node could wait there for ever while
      // another node frees up (or was only reported busy a moment ago): look again after
      // the next health check instead.
      actor.waiting_for_room = true;
      return {};
    }
    if (node != nullptr) node = pick_node_locked(resources, strategy, &why, /*take=*/true, &actor.refused_by);
  }
  if (node == nullptr) {
    if (!actor.refusal.empty()) why += "; a node that could hold it refused: " + actor.refusal;
    mark_dead_locked(actor, make_error(proto::ErrorInfo::INFEASIBLE, "cannot place actor: it " + why));
    return {};
  }
  auto call = std::make_shared<LeaseCall>();
  if (strategy.kind() == proto::SchedulingStrategy::PLACEMENT_GROUP) *call->request.mutable_strategy() = strategy;
  *call->request.mutable_resources() = actor.spec.resources();
  call->request.set_for_actor(true);
  call->request.set_actor_id(actor.spec.actor_id());
  call->request.set_owner_address(actor.spec.owner_address());
  call->request.set_job_id(actor.spec.job_id());
  call->request.set_description("actor " + actor_label(actor.spec));
  call->request.set_spilled(true);  // placed here: the agent must not send it on
  call->request.set_detached(actor.spec.detached());
  ActorId id = ActorId::from_binary(actor.spec.actor_id());
  uint64_t placement = ++actor.placement;
  std::string agent_address = node->agent_address;
  std::shared_ptr<proto::NodeAgent::Stub> agent = node->agent;
  uint64_t promise = 0;
  if (strategy.kind() != proto::SchedulingStrategy::PLACEMENT_GROUP) {
    // Bundles hold their own reservations; a plain actor's resources count as taken on
    // the node until its reports show them.
    promise = next_promise_++;
    nodes_.at(node->id).promised.push_back({promise, resources});
  }
  ++calls_in_flight_;
  return [this, agent, call, id, placement, agent_address, promise] {
    agent->async()->RequestLease(&call->ctx, &call->request, &call->reply,
                                 [this, call, id, placement, agent_address, promise](grpc::Status s) {
                                   on_actor_lease(id, placement, agent_address, promise, s, call->reply);
                                   std::lock_guard<std::mutex> lock(mu_);
                                   --calls_in_flight_;
                                   cv_.notify_all();
                                 });
  };
}

void HeadService::settle_promise_locked(const std::string& agent_address, uint64_t promise, bool granted) {
  if (promise == 0) return;
  for (auto& [node_id, node] : nodes_) {
    if (node.agent_address != agent_address) continue;
    for (auto it = node.promised.begin(); it != node.promised.end(); ++it) {
      if (it->id != promise) continue;
      if (granted) {
        it->granted = true;
        it->granted_at = std::chrono::steady_clock::now();
      } else {
        node.promised.erase(it);
      }
      return;
    }
  }
}

void HeadService::on_actor_lease(const ActorId& id, uint64_t placement, const std::string& agent_address,
                                 uint64_t promise, const grpc::Status& status, const proto::LeaseReply& reply) {
  std::unique_lock<std::mutex> lock(mu_);
  settle_promise_locked(agent_address, promise, status.ok() && reply.granted());
  auto it = actors_.find(id);
  bool stale = it == actors_.end() || it->second.placement != placement ||
               it->second.info.state() == proto::ActorInfo::DEAD;
  if (stale || stopping_) {
    if (status.ok() && reply.granted()) {
      lock.unlock();
      kill_worker(agent_address, UniqueId::from_binary(reply.worker_id()));
    }
    return;
  }
  Actor& actor = it->second;
  if (!status.ok()) {
    mark_dead_locked(actor, make_error(proto::ErrorInfo::ACTOR_DIED,
                                       "cannot lease a worker for the actor: " + status.error_message()));
    return;
  }
  if (reply.has_error() && reply.job_refused() &&
      actor.spec.strategy().kind() != proto::SchedulingStrategy::PLACEMENT_GROUP) {
    // That node cannot run the job's program; another may.
    for (const auto& [node_id, node] : nodes_)
      if (node.agent_address == agent_address) actor.refused_by.insert(node_id);
    actor.refusal = reply.error().message();
    GANTRY_LOG_INFO("actor {}: {}; placing it on another node", actor_label(actor.spec), actor.refusal);
    auto start = place_actor_locked(actor);
    lock.unlock();
    if (start) start();
    return;
  }
  if (reply.has_error()) {
    mark_dead_locked(actor, reply.error());
    return;
  }
  actor.worker_id = UniqueId::from_binary(reply.worker_id());
  actor.node_agent = agent_address;
  actor.info.set_pid(reply.worker_pid());
  actor.info.set_node_id(UniqueId::from_binary(reply.node_id()).hex());

  auto call = std::make_shared<CreateCall>();
  call->request.set_actor_id(actor.spec.actor_id());
  call->request.set_factory(actor.spec.factory());
  *call->request.mutable_args() = actor.spec.args();
  call->request.set_class_name(actor.spec.class_name());
  call->request.set_restart_count(actor.info.num_restarts());
  call->request.set_max_concurrency(actor.spec.max_concurrency());
  *call->request.mutable_resources() = actor.spec.resources();
  call->request.set_job_id(actor.spec.job_id());
  for (int g : reply.gpu_ids()) call->request.add_gpu_ids(g);
  std::string worker_address = reply.worker_address(), task_address = reply.task_address();
  std::shared_ptr<proto::WorkerService::Stub> stub = proto::WorkerService::NewStub(channels_.get(worker_address));
  ++calls_in_flight_;
  lock.unlock();
  stub->async()->CreateActor(&call->ctx, &call->request, &call->reply,
                             [this, stub, call, id, placement, worker_address, task_address](grpc::Status s) {
                               {
                                 std::lock_guard<std::mutex> lock(mu_);
                                 auto it = actors_.find(id);
                                 if (it != actors_.end() && it->second.placement == placement && s.ok() &&
                                     call->reply.ok()) {
                                   it->second.info.set_address(worker_address);
                                   it->second.info.set_task_address(task_address);
                                 }
                               }
                               on_actor_created(id, placement, s, call->reply);
                               std::lock_guard<std::mutex> lock(mu_);
                               --calls_in_flight_;
                               cv_.notify_all();
                             });
}

void HeadService::on_actor_created(const ActorId& id, uint64_t placement, const grpc::Status& status,
                                   const proto::CreateActorReply& reply) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = actors_.find(id);
  if (it == actors_.end() || it->second.placement != placement) return;
  Actor& actor = it->second;
  if (actor.info.state() == proto::ActorInfo::DEAD) return;
  if (status.ok() && reply.ok()) {
    bool node_alive = false;
    for (const auto& [node_id, node] : nodes_) node_alive |= node.agent_address == actor.node_agent && node.alive;
    if (!node_alive) {
      // Its node was declared dead while the actor started there: start it elsewhere.
      std::vector<std::function<void()>> starts;
      actor_failed_locked(actor, "its node " + actor.node_agent + " was declared dead while it started", starts);
      lock.unlock();
      for (auto& start : starts) start();
      return;
    }
    actor.info.set_state(proto::ActorInfo::ALIVE);
    GANTRY_LOG_DEBUG("actor {} alive at {}", actor_label(actor.spec), actor.info.address());
    cv_.notify_all();
    return;
  }
  proto::ErrorInfo cause = reply.has_error()
                               ? reply.error()
                               : make_error(proto::ErrorInfo::ACTOR_DIED,
                                            "the actor's worker did not answer: " + status.error_message());
  // The factory threw: re-running it would throw again, so the actor is dead for good.
  std::string agent = actor.node_agent;
  UniqueId worker = actor.worker_id;
  actor.killed = true;
  mark_dead_locked(actor, cause);
  lock.unlock();
  kill_worker(agent, worker);
}

void HeadService::mark_dead_locked(Actor& actor, const proto::ErrorInfo& cause) {
  actor.info.set_state(proto::ActorInfo::DEAD);
  actor.info.set_address("");
  actor.info.set_task_address("");
  *actor.info.mutable_death_cause() = cause;
  if (!actor.spec.name().empty()) {
    auto named = named_actors_.find(actor.spec.name());
    if (named != named_actors_.end() && named->second == ActorId::from_binary(actor.spec.actor_id()))
      named_actors_.erase(named);
  }
  GANTRY_LOG_DEBUG("actor {} dead: {}", actor_label(actor.spec), cause.message());
  cv_.notify_all();
}

void HeadService::kill_worker(const std::string& agent_address, const UniqueId& worker_id) {
  if (agent_address.empty() || worker_id.is_nil()) return;
  auto stub = proto::NodeAgent::NewStub(channels_.get(agent_address));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  proto::KillWorkerRequest req;
  req.set_worker_id(worker_id.binary());
  proto::Empty reply;
  stub->KillWorker(&ctx, req, &reply);
}

grpc::Status HeadService::GetActor(grpc::ServerContext* ctx, const proto::GetActorRequest* req,
                                   proto::GetActorReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::unique_lock<std::mutex> lock(mu_);
  ActorId id = ActorId::from_binary(req->actor_id());
  if (id.is_nil() && !req->name().empty()) {
    auto named = named_actors_.find(req->name());
    if (named == named_actors_.end()) return grpc::Status::OK;
    id = named->second;
  }
  auto deadline = req->timeout_ms() < 0 ? std::chrono::steady_clock::time_point::max()
                                        : std::chrono::steady_clock::now() + std::chrono::milliseconds(req->timeout_ms());
  while (true) {
    auto it = actors_.find(id);
    if (it == actors_.end()) return grpc::Status::OK;
    const proto::ActorInfo& info = it->second.info;
    bool settled = info.state() == proto::ActorInfo::DEAD ||
                   (info.state() == proto::ActorInfo::ALIVE && info.address() != req->known_address());
    if (!req->wait() || settled || std::chrono::steady_clock::now() >= deadline) {
      reply->set_found(true);
      *reply->mutable_info() = info;
      return grpc::Status::OK;
    }
    if (stopping_ || ctx->IsCancelled()) return {grpc::StatusCode::UNAVAILABLE, "head is stopping"};
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
}

grpc::Status HeadService::KillActor(grpc::ServerContext* ctx, const proto::KillActorRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::unique_lock<std::mutex> lock(mu_);
  auto it = actors_.find(ActorId::from_binary(req->actor_id()));
  if (it == actors_.end()) return {grpc::StatusCode::NOT_FOUND, "no such actor"};
  Actor& actor = it->second;
  if (actor.info.state() == proto::ActorInfo::DEAD) return grpc::Status::OK;
  std::string agent = actor.node_agent;
  UniqueId worker = actor.worker_id;
  if (req->no_restart()) {
    actor.killed = true;
    mark_dead_locked(actor, make_error(proto::ErrorInfo::ACTOR_DIED,
                                       "actor " + actor_label(actor.spec) + " was killed with gantry::kill"));
  }
  lock.unlock();
  kill_worker(agent, worker);
  return grpc::Status::OK;
}

grpc::Status HeadService::ReportWorkerFailure(grpc::ServerContext* ctx, const proto::WorkerFailure* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId worker = UniqueId::from_binary(req->worker_id());
  std::vector<std::function<void()>> starts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, actor] : actors_)
      if (actor.worker_id == worker && actor.info.state() != proto::ActorInfo::DEAD)
        actor_failed_locked(actor, req->reason(), starts);
  }
  for (auto& start : starts) start();
  return grpc::Status::OK;
}

void HeadService::actor_failed_locked(Actor& actor, const std::string& reason,
                                      std::vector<std::function<void()>>& starts) {
  actor.worker_id = UniqueId();
  actor.info.set_address("");
  actor.info.set_task_address("");
  int max = actor.spec.max_restarts();
  if (!actor.killed && !stopping_ && (max < 0 || actor.info.num_restarts() < max)) {
    actor.info.set_num_restarts(actor.info.num_restarts() + 1);
    actor.info.set_state(proto::ActorInfo::RESTARTING);
    GANTRY_LOG_INFO("restarting actor {} ({} of {}): {}", actor_label(actor.spec), actor.info.num_restarts(),
                    max < 0 ? std::string("unlimited") : std::to_string(max), reason);
    if (auto start = place_actor_locked(actor)) starts.push_back(std::move(start));
  } else {
    mark_dead_locked(actor, make_error(proto::ErrorInfo::ACTOR_DIED,
                                       "actor " + actor_label(actor.spec) + " died: " + reason +
                                           (actor.killed ? "" : "; no restarts left (max_restarts = " +
                                                                    std::to_string(max) + ")")));
  }
  cv_.notify_all();
}

void HeadService::health_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    // cv_ is notified for many reasons (each probe's answer among them): wait out the
    // period, or every answer would start the next round at once and the probes would
    // spin.
    auto next_round = std::chrono::steady_clock::now() + health_.period;
    cv_.wait_until(lock, next_round, [&] { return stopping_ || std::chrono::steady_clock::now() >= next_round; });
    if (stopping_) break;
    // Ask every live node at once; each answer (or failure) lands in the table.
    std::vector<std::pair<UniqueId, std::shared_ptr<proto::NodeAgent::Stub>>> probes;
    for (const auto& [id, node] : nodes_)
      if (node.alive) probes.emplace_back(id, node.agent);
    lock.unlock();
    for (const auto& [id, agent] : probes) {
      struct Probe {
        grpc::ClientContext ctx;
        proto::Empty request;
        proto::NodeStats reply;
      };
      auto probe = std::make_shared<Probe>();
      // A slow answer still counts if it comes within the timeout (probes may overlap).
      probe->ctx.set_deadline(std::chrono::system_clock::now() + health_.timeout);
      {
        std::lock_guard<std::mutex> guard(mu_);
        ++calls_in_flight_;
      }
      UniqueId node_id = id;
      auto sent = std::chrono::steady_clock::now();
      agent->async()->GetNodeStats(&probe->ctx, &probe->request, &probe->reply, [this, probe, node_id, sent](grpc::Status s) {
        std::lock_guard<std::mutex> guard(mu_);
        auto it = nodes_.find(node_id);
        if (s.ok() && it != nodes_.end()) {
          Node& node = it->second;
          node.last_seen = std::chrono::steady_clock::now();
          try {
            ResourceSet available = from_proto(probe->reply.available());
            // Leases granted before this probe left are in the node's figure; the rest
            // are not yet.
            std::erase_if(node.promised, [&](const Node::Promise& p) { return p.granted && p.granted_at <= sent; });
            for (const Node::Promise& p : node.promised)
              if (available.contains(p.resources)) available -= p.resources;
            node.available = available;
          } catch (const std::exception&) {
            // keep the old figure; a node reporting garbage still answered
          }
        }
        --calls_in_flight_;
        cv_.notify_all();
      });
    }
    lock.lock();
    auto now = std::chrono::steady_clock::now();
    std::vector<std::function<void()>> starts;
    for (auto& [id, node] : nodes_) {
      if (!node.alive || now - node.last_seen < health_.timeout) continue;
      node.alive = false;
      std::string why = "node " + id.short_hex() + " (" + node.agent_address + ") stopped answering health checks for " +
                        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - node.last_seen).count()) +
                        " ms and is considered dead";
      GANTRY_LOG_WARN("{}", why);
      // Its bundles are placed again elsewhere.
      for (auto& [group_id, group] : groups_) {
        auto& info = group.info;
        if (info.state() == proto::PlacementGroupInfo::REMOVED) continue;
        bool lost = false;
        for (int i = 0; i < info.bundle_node_ids_size(); ++i)
          if (UniqueId::from_binary(info.bundle_node_ids(i)) == id) {
            info.set_bundle_node_ids(i, "");
            info.set_bundle_agent_addresses(i, "");
            lost = true;
          }
        if (!lost) continue;
        info.set_state(proto::PlacementGroupInfo::RESCHEDULING);
        info.set_message("bundles on dead node " + id.short_hex() + " are being placed again");
        groups_changed_ = true;
        GANTRY_LOG_WARN("placement group {} lost bundles on node {}; placing them again", group_id.short_hex(),
                        id.short_hex());
      }
      for (auto& [actor_id, actor] : actors_)
        if (actor.node_agent == node.agent_address && actor.info.state() != proto::ActorInfo::DEAD)
          actor_failed_locked(actor, why, starts);
    }
    if (groups_changed_) cv_.notify_all();
    // A driver that joined by address and then died (SIGKILL, a lost machine) never calls
    // FinishJob: its actors, placement groups and workers would hold the cluster for
    // ever. Its server is probed here by connecting to it; a driver not reachable for
    // twice the node timeout is gone, and so is its job.
    std::vector<std::pair<UniqueId, std::string>> lost_drivers;
    for (auto& [id, job] : jobs_) {
      if (job.state() != proto::JobSpec::RUNNING || job.driver_address().empty()) continue;
      auto seen = driver_seen_.find(id);
      if (seen == driver_seen_.end()) continue;
      grpc_connectivity_state state = channels_.get(job.driver_address())->GetState(/*try_to_connect=*/true);
      if (state == GRPC_CHANNEL_READY) {
        seen->second = now;
      } else if (now - seen->second > 2 * health_.timeout) {
        lost_drivers.emplace_back(id, job.driver_address());
      }
    }
    if (!lost_drivers.empty()) {
      lock.unlock();
      for (const auto& [id, address] : lost_drivers) {
        GANTRY_LOG_WARN("the driver of job {} ({}) has not been reachable for {} ms: ending its job", id.short_hex(),
                        address, (2 * health_.timeout).count());
        finish_job(id, /*wait_for_agents=*/false);
      }
      lock.lock();
    }
    // Actors that found no room at the last look try again with this round's figures
    // (the probes sent last round have answered by now).
    for (auto& [actor_id, actor] : actors_)
      if (actor.waiting_for_room && actor.info.state() != proto::ActorInfo::DEAD)
        if (auto start = place_actor_locked(actor)) starts.push_back(std::move(start));
    if (!starts.empty()) {
      lock.unlock();
      for (auto& start : starts) start();
      lock.lock();
    }
  }
}

grpc::Status HeadService::ListActors(grpc::ServerContext* ctx, const proto::Empty*, proto::ListActorsReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, actor] : actors_) {
    proto::ActorInfo* info = reply->add_actors();
    *info = actor.info;
    *info->mutable_resources() = actor.spec.resources();
    info->set_job_id(actor.spec.job_id());
  }
  return grpc::Status::OK;
}

grpc::Status HeadService::RegisterJob(grpc::ServerContext* ctx, const proto::JobSpec* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId id = UniqueId::from_binary(req->job_id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "job id must be 16 bytes"};
  if (req->executable().empty() || req->executable()[0] != '/')
    return {grpc::StatusCode::INVALID_ARGUMENT, "a job's executable must be an absolute path"};
  if (req->argv().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "a job's argv must hold at least argv[0]"};
  std::lock_guard<std::mutex> lock(mu_);
  if (jobs_.count(id)) return {grpc::StatusCode::ALREADY_EXISTS, "job " + id.hex() + " is registered already"};
  proto::JobSpec job = *req;
  job.set_state(proto::JobSpec::RUNNING);
  job.set_start_time_ms(unix_time_ms());
  job.set_end_time_ms(0);
  GANTRY_LOG_INFO("job {} started: {} (driver {})", id.short_hex(), job.executable(), job.driver_address());
  driver_seen_[id] = std::chrono::steady_clock::now();
  jobs_.emplace(id, std::move(job));
  return grpc::Status::OK;
}

grpc::Status HeadService::GetJob(grpc::ServerContext* ctx, const proto::JobRequest* req, proto::JobSpec* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(UniqueId::from_binary(req->job_id()));
  if (it == jobs_.end()) return {grpc::StatusCode::NOT_FOUND, "no such job"};
  *reply = it->second;
  return grpc::Status::OK;
}

grpc::Status HeadService::FinishJob(grpc::ServerContext* ctx, const proto::JobRequest* req, proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId id = UniqueId::from_binary(req->job_id());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (jobs_.find(id) == jobs_.end()) return {grpc::StatusCode::NOT_FOUND, "no such job"};
  }
  finish_job(id, /*wait_for_agents=*/true);
  return grpc::Status::OK;
}

void HeadService::finish_job(const UniqueId& id, bool wait_for_agents) {
  std::string job_id = id.binary();
  std::vector<std::shared_ptr<proto::NodeAgent::Stub>> agents;
  std::vector<Release> releases;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.state() == proto::JobSpec::FINISHED) return;
    it->second.set_state(proto::JobSpec::FINISHED);
    it->second.set_end_time_ms(unix_time_ms());
    driver_seen_.erase(id);
    // The job's actors go with it (their processes are the job's workers), except
    // detached ones.
    for (auto& [actor_id, actor] : actors_)
      if (actor.spec.job_id() == job_id && !actor.spec.detached() && actor.info.state() != proto::ActorInfo::DEAD) {
        actor.killed = true;
        mark_dead_locked(actor, make_error(proto::ErrorInfo::ACTOR_DIED, "its job " + id.hex() + " finished"));
      }
    for (const auto& [node_id, node] : nodes_) agents.push_back(node.agent);
    // So do its placement groups.
    for (auto& [group_id, group] : groups_)
      if (group.info.spec().job_id() == job_id && group.info.state() != proto::PlacementGroupInfo::REMOVED)
        remove_group_locked(group, "its job " + id.hex() + " finished", releases);
    GANTRY_LOG_INFO("job {} finished", id.short_hex());
  }
  drop_job_keys(job_id);
  send_releases(releases);
  // Every node stops the job's workers; FinishJob replies when all have (or gave up), so
  // the driver can keep serving their last output until then.
  struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    size_t left;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = agents.size();
  for (const auto& agent : agents) {
    struct Call {
      grpc::ClientContext ctx;
      proto::JobRequest request;
      proto::Empty reply;
    };
    auto call = std::make_shared<Call>();
    call->request.set_job_id(job_id);
    call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    agent->async()->JobFinished(&call->ctx, &call->request, &call->reply, [call, pending](grpc::Status) {
      std::lock_guard<std::mutex> lock(pending->mu);
      if (--pending->left == 0) pending->cv.notify_all();
    });
  }
  if (!wait_for_agents) return;
  std::unique_lock<std::mutex> lock(pending->mu);
  pending->cv.wait_for(lock, std::chrono::seconds(12), [&] { return pending->left == 0; });
}

grpc::Status HeadService::ListJobs(grpc::ServerContext* ctx, const proto::Empty*, proto::ListJobsReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, job] : jobs_) *reply->add_jobs() = job;
  return grpc::Status::OK;
}

std::vector<const HeadService::Node*> HeadService::nodes_in_order_locked() const {
  std::vector<const Node*> ordered;
  for (const auto& [id, node] : nodes_) ordered.push_back(&node);
  std::sort(ordered.begin(), ordered.end(), [](const Node* a, const Node* b) { return a->registered < b->registered; });
  return ordered;
}

grpc::Status HeadService::GetClusterView(grpc::ServerContext* ctx, const proto::Empty*, proto::ClusterView* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  for (const Node* node : nodes_in_order_locked()) {
    proto::NodeView* view = reply->add_nodes();
    view->set_node_id(node->id.binary());
    view->set_agent_address(node->agent_address);
    *view->mutable_total() = to_proto(node->shape->total());
    *view->mutable_available() = to_proto(node->available);
    view->set_alive(node->alive);
    view->set_num_gpus(node->num_gpus);
    view->set_object_address(node->object_address);
  }
  return grpc::Status::OK;
}

grpc::Status HeadService::ListNodes(grpc::ServerContext* ctx, const proto::Empty*, proto::ListNodesReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  // In the order they registered: the head's own node first.
  for (const Node* n : nodes_in_order_locked()) {
    const Node& node = *n;
    const UniqueId& id = node.id;
    proto::NodeInfo* info = reply->add_nodes();
    info->set_node_id(id.binary());
    info->set_agent_address(node.agent_address);
    *info->mutable_total() = to_proto(node.shape->total());
    info->set_num_gpus(node.num_gpus);
    info->set_hostname(node.hostname);
    info->set_alive(node.alive);
  }
  return grpc::Status::OK;
}

}  // namespace gantry::internal
