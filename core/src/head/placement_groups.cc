// The head's placement groups: creation with a feasibility check, placement of waiting
// groups (group_loop), lookup, removal, and the bundle an actor in a group runs in.
#include <algorithm>
#include <chrono>

#include "common/logging.h"
#include "head/head_service.h"
#include "rpc/auth.h"
#include "scheduler/bundles.h"

namespace gantry::internal {
namespace {

constexpr int kMaxBundles = 1000;
constexpr auto kGroupRetryPeriod = std::chrono::milliseconds(500);

BundleStrategy strategy_of(proto::PlacementGroupSpec::Strategy s) {
  switch (s) {
    case proto::PlacementGroupSpec::SPREAD: return BundleStrategy::kSpread;
    case proto::PlacementGroupSpec::STRICT_PACK: return BundleStrategy::kStrictPack;
    case proto::PlacementGroupSpec::STRICT_SPREAD: return BundleStrategy::kStrictSpread;
    default: return BundleStrategy::kPack;
  }
}

std::string group_label(const proto::PlacementGroupSpec& spec) {
  std::string label = "placement group " + UniqueId::from_binary(spec.group_id()).short_hex();
  if (!spec.name().empty()) label += " '" + spec.name() + "'";
  return label;
}

// A node's ledger with `available` free: what is in use is allocated on it, GPUs as
// whole devices and one fraction (the head does not know the per-device split; the
// agent's reservation is the final word).
NodeResources ledger_with_free(const NodeResources& shape, int num_gpus, const ResourceSet& available) {
  NodeResources ledger(shape.total(), num_gpus);
  ResourceSet used;
  for (const auto& [name, total] : shape.total().quantities()) {
    FixedPoint free = available.get(name);
    if (free < total) used.set(name, total - free);
  }
  FixedPoint gpu = used.get(kGpu);
  used.set(kGpu, FixedPoint());
  (void)ledger.allocate(used);
  FixedPoint whole = FixedPoint::whole(gpu.raw() / kResourceUnit);
  ResourceSet gpus;
  gpus.set(kGpu, whole);
  if (whole > FixedPoint()) (void)ledger.allocate(gpus);
  gpus.set(kGpu, gpu - whole);
  if (gpu - whole > FixedPoint()) (void)ledger.allocate(gpus);
  return ledger;
}

}  // namespace

grpc::Status HeadService::CreatePlacementGroup(grpc::ServerContext* ctx, const proto::PlacementGroupSpec* spec,
                                               proto::CreatePlacementGroupReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  UniqueId id = UniqueId::from_binary(spec->group_id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "placement group id must be 16 bytes"};
  if (spec->bundles_size() == 0 || spec->bundles_size() > kMaxBundles)
    return {grpc::StatusCode::INVALID_ARGUMENT,
            "a placement group needs 1 to " + std::to_string(kMaxBundles) + " bundles, not " +
                std::to_string(spec->bundles_size())};
  std::vector<ResourceSet> bundles;
  for (int i = 0; i < spec->bundles_size(); ++i) {
    ResourceSet b;
    try {
      b = from_proto(spec->bundles(i));
    } catch (const std::exception& e) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "bundle " + std::to_string(i) + ": " + e.what()};
    }
    if (b.empty())
      return {grpc::StatusCode::INVALID_ARGUMENT, "bundle " + std::to_string(i) + " is empty; give it resources"};
    if (!GpuAllocator::is_valid_request(b.get(kGpu)))
      return {grpc::StatusCode::INVALID_ARGUMENT, "bundle " + std::to_string(i) + " asks for GPU: " +
                                                      b.get(kGpu).to_string() +
                                                      "; GPU amounts above 1 must be whole numbers"};
    bundles.push_back(std::move(b));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "head is stopping"};
  if (groups_.count(id)) return {grpc::StatusCode::ALREADY_EXISTS, "placement group id already registered"};
  if (!spec->name().empty() && named_groups_.count(spec->name()))
    return {grpc::StatusCode::ALREADY_EXISTS, "a placement group named '" + spec->name() +
                                                  "' exists; pick another name or remove it first"};
  std::vector<NodeResources> shapes;
  for (const Node* node : nodes_in_order_locked())
    if (node->alive) shapes.emplace_back(node->shape->total(), node->num_gpus);
  BundleStrategy strategy = strategy_of(spec->strategy());
  if (std::string why = bundles_infeasible_reason(shapes, bundles, strategy); !why.empty()) {
    *reply->mutable_error() = make_error(
        proto::ErrorInfo::INFEASIBLE, "cannot create a placement group of " + std::to_string(bundles.size()) +
                                          " bundle(s) with strategy " + to_string(strategy) + ": " + why);
    return grpc::Status::OK;
  }
  Group& group = groups_[id];
  group.order = next_group_order_++;
  *group.info.mutable_spec() = *spec;
  group.info.set_state(proto::PlacementGroupInfo::PENDING);
  group.info.set_create_time_ms(unix_time_ms());
  for (int i = 0; i < spec->bundles_size(); ++i) {
    group.info.add_bundle_node_ids();
    group.info.add_bundle_agent_addresses();
  }
  if (!spec->name().empty()) named_groups_[spec->name()] = id;
  GANTRY_LOG_INFO("{} created: {} bundle(s), {}", group_label(*spec), bundles.size(), to_string(strategy));
  groups_changed_ = true;
  cv_.notify_all();
  return grpc::Status::OK;
}

grpc::Status HeadService::GetPlacementGroup(grpc::ServerContext* ctx, const proto::PlacementGroupRequest* req,
                                            proto::GetPlacementGroupReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::unique_lock<std::mutex> lock(mu_);
  UniqueId id = UniqueId::from_binary(req->group_id());
  if (id.is_nil() && !req->name().empty()) {
    auto named = named_groups_.find(req->name());
    if (named == named_groups_.end()) return grpc::Status::OK;
    id = named->second;
  }
  auto deadline = req->timeout_ms() < 0 ? std::chrono::steady_clock::time_point::max()
                                        : std::chrono::steady_clock::now() + std::chrono::milliseconds(req->timeout_ms());
  while (true) {
    auto it = groups_.find(id);
    if (it == groups_.end()) return grpc::Status::OK;
    auto state = it->second.info.state();
    bool settled = state == proto::PlacementGroupInfo::CREATED || state == proto::PlacementGroupInfo::REMOVED;
    if (!req->wait() || settled || std::chrono::steady_clock::now() >= deadline) {
      reply->set_found(true);
      *reply->mutable_info() = it->second.info;
      return grpc::Status::OK;
    }
    if (stopping_ || ctx->IsCancelled()) return {grpc::StatusCode::UNAVAILABLE, "head is stopping"};
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
}

grpc::Status HeadService::RemovePlacementGroup(grpc::ServerContext* ctx, const proto::PlacementGroupRequest* req,
                                               proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::vector<Release> releases;
  {
    std::lock_guard<std::mutex> lock(mu_);
    UniqueId id = UniqueId::from_binary(req->group_id());
    if (id.is_nil() && !req->name().empty()) {
      auto named = named_groups_.find(req->name());
      if (named != named_groups_.end()) id = named->second;
    }
    auto it = groups_.find(id);
    if (it == groups_.end()) return {grpc::StatusCode::NOT_FOUND, "no such placement group"};
    if (it->second.info.state() != proto::PlacementGroupInfo::REMOVED)
      remove_group_locked(it->second, "was removed", releases);
  }
  send_releases(releases);
  return grpc::Status::OK;
}

grpc::Status HeadService::ListPlacementGroups(grpc::ServerContext* ctx, const proto::Empty*,
                                              proto::ListPlacementGroupsReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const Group*> ordered;
  for (const auto& [id, group] : groups_) ordered.push_back(&group);
  std::sort(ordered.begin(), ordered.end(), [](const Group* a, const Group* b) { return a->order < b->order; });
  for (const Group* group : ordered) *reply->add_groups() = group->info;
  return grpc::Status::OK;
}

void HeadService::remove_group_locked(Group& group, const std::string& why, std::vector<Release>& releases) {
  auto& info = group.info;
  UniqueId id = UniqueId::from_binary(info.spec().group_id());
  std::map<std::string, Release> by_node;
  for (int i = 0; i < info.bundle_node_ids_size(); ++i) {
    auto node = nodes_.find(UniqueId::from_binary(info.bundle_node_ids(i)));
    if (node == nodes_.end() || !node->second.alive) continue;
    Release& r = by_node[info.bundle_node_ids(i)];
    r.agent = node->second.agent;
    r.request.set_group_id(info.spec().group_id());
    r.request.set_reason(why);
  }
  for (auto& [node, release] : by_node) releases.push_back(std::move(release));
  info.set_state(proto::PlacementGroupInfo::REMOVED);
  info.set_message(why);
  if (!info.spec().name().empty()) {
    auto named = named_groups_.find(info.spec().name());
    if (named != named_groups_.end() && named->second == id) named_groups_.erase(named);
  }
  for (auto& [actor_id, actor] : actors_)
    if (actor.waiting_for_group && actor.spec.strategy().placement_group_id() == info.spec().group_id()) {
      actor.waiting_for_group = false;
      mark_dead_locked(actor, make_error(proto::ErrorInfo::INFEASIBLE,
                                         "cannot place actor: its " + group_label(info.spec()) + " " + why));
    }
  GANTRY_LOG_INFO("{} {}", group_label(info.spec()), why);
  groups_changed_ = true;  // its room may let others in
  cv_.notify_all();
}

void HeadService::send_releases(const std::vector<Release>& releases) {
  for (const Release& r : releases) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    proto::Empty reply;
    grpc::Status s = r.agent->ReleaseBundles(&ctx, r.request, &reply);
    if (!s.ok()) GANTRY_LOG_WARN("cannot release bundles on a node: {}", s.error_message());
  }
}

const HeadService::Node* HeadService::pick_bundle_node_locked(const ResourceSet& resources,
                                                              const proto::SchedulingStrategy& strategy,
                                                              std::string* why, bool* wait, int* bundle, bool take) {
  *wait = false;
  UniqueId id = UniqueId::from_binary(strategy.placement_group_id());
  auto it = groups_.find(id);
  if (it == groups_.end()) {
    *why = "asks for placement group " + id.hex() + ", which does not exist";
    return nullptr;
  }
  const proto::PlacementGroupInfo& info = it->second.info;
  const std::string label = group_label(info.spec());
  if (info.state() == proto::PlacementGroupInfo::REMOVED) {
    *why = "asks for " + label + ", which " + info.message();
    return nullptr;
  }
  int n = info.spec().bundles_size();
  if (strategy.bundle_index() >= n) {
    *why = "asks for bundle " + std::to_string(strategy.bundle_index()) + " of " + label + ", which has " +
           std::to_string(n);
    return nullptr;
  }
  std::string held;
  std::vector<int> fitting = bundles_holding(info.spec(), strategy.bundle_index(), resources, &held);
  if (fitting.empty()) {
    *why = "does not fit " + (strategy.bundle_index() >= 0 ? "bundle " + std::to_string(strategy.bundle_index())
                                                            : std::string("any bundle")) +
           " of " + label + " (" + held + ")";
    return nullptr;
  }
  // Bundles with a node now (a group being placed again still has the others).
  std::vector<std::pair<int, const Node*>> placed;
  for (int i : fitting) {
    auto node = nodes_.find(UniqueId::from_binary(info.bundle_node_ids(i)));
    if (node != nodes_.end() && node->second.alive) placed.emplace_back(i, &node->second);
  }
  if (placed.empty() || info.state() == proto::PlacementGroupInfo::PENDING) {
    *wait = true;
    return nullptr;
  }
  const auto& chosen = placed[(take ? spread_cursor_++ : spread_cursor_) % placed.size()];
  *bundle = chosen.first;
  return chosen.second;
}

void HeadService::group_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, kGroupRetryPeriod, [this] { return stopping_ || groups_changed_; });
    if (stopping_) break;
    bool waiting = false;
    for (const auto& [id, group] : groups_) {
      auto state = group.info.state();
      waiting |= state == proto::PlacementGroupInfo::PENDING || state == proto::PlacementGroupInfo::RESCHEDULING;
    }
    groups_changed_ = false;
    if (!waiting) continue;
    lock.unlock();
    place_waiting_groups();
    lock.lock();
  }
}

void HeadService::place_waiting_groups() {
  struct Candidate {
    UniqueId id;
    std::string address;
    std::shared_ptr<proto::NodeAgent::Stub> agent;
    std::unique_ptr<NodeResources> ledger;
  };
  std::vector<Candidate> nodes;
  std::vector<std::pair<uint64_t, UniqueId>> waiting;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Node* node : nodes_in_order_locked())
      if (node->alive) {
        Candidate c{node->id, node->agent_address, node->agent, nullptr};
        c.ledger = std::make_unique<NodeResources>(node->shape->total(), node->num_gpus);
        nodes.push_back(std::move(c));
      }
    for (const auto& [id, group] : groups_) {
      auto state = group.info.state();
      if (state == proto::PlacementGroupInfo::PENDING || state == proto::PlacementGroupInfo::RESCHEDULING)
        waiting.emplace_back(group.order, id);
    }
  }
  std::sort(waiting.begin(), waiting.end());
  // What each node has free now: the agents' own figures (health checks may be off, as
  // in the embedded cluster, or a second old).
  std::vector<Candidate> live;
  for (auto& c : nodes) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    proto::Empty req;
    proto::NodeStats stats;
    if (!c.agent->GetNodeStats(&ctx, req, &stats).ok()) continue;
    try {
      *c.ledger = ledger_with_free(*c.ledger, static_cast<int>(c.ledger->gpus().num_devices()),
                                   from_proto(stats.available()));
    } catch (const std::exception&) {
      continue;
    }
    live.push_back(std::move(c));
  }

  for (const auto& [order, id] : waiting) {
    proto::PlacementGroupSpec spec;
    std::vector<int> fixed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = groups_.find(id);
      if (it == groups_.end() || it->second.info.state() == proto::PlacementGroupInfo::REMOVED) continue;
      spec = it->second.info.spec();
      for (const auto& node_id : it->second.info.bundle_node_ids()) {
        int at = -1;
        for (size_t k = 0; k < live.size(); ++k)
          if (!node_id.empty() && live[k].id == UniqueId::from_binary(node_id)) at = static_cast<int>(k);
        fixed.push_back(at);
      }
    }
    std::vector<ResourceSet> bundles;
    for (const auto& b : spec.bundles()) bundles.push_back(from_proto(b));
    std::vector<NodeResources> ledgers;
    for (const auto& c : live) ledgers.push_back(*c.ledger);
    BundleStrategy strategy = strategy_of(spec.strategy());
    std::optional<std::vector<int>> plan = plan_bundles(std::move(ledgers), bundles, strategy, fixed);
    if (!plan) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = groups_.find(id);
      if (it != groups_.end() && it->second.info.state() != proto::PlacementGroupInfo::REMOVED)
        it->second.info.set_message("waiting for room: no node layout under " + std::string(to_string(strategy)) +
                                    " fits the cluster's free resources now");
      continue;
    }
    // Reserve node by node; a refusal (the node's figures moved) undoes the others.
    std::map<size_t, proto::ReserveBundlesRequest> per_node;
    for (size_t i = 0; i < bundles.size(); ++i) {
      if (fixed[i] >= 0) continue;
      auto& r = per_node[static_cast<size_t>((*plan)[i])];
      r.set_group_id(spec.group_id());
      r.add_bundle_indexes(static_cast<int>(i));
      *r.add_bundles() = spec.bundles(static_cast<int>(i));
    }
    std::vector<size_t> reserved;
    std::string refusal;
    for (const auto& [k, request] : per_node) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      proto::ReserveBundlesReply reply;
      grpc::Status s = live[k].agent->ReserveBundles(&ctx, request, &reply);
      if (s.ok() && reply.reserved()) {
        reserved.push_back(k);
        continue;
      }
      refusal = s.ok() ? reply.reason() : "node " + live[k].id.short_hex() + " did not answer: " + s.error_message();
      break;
    }
    auto undo = [&](const std::vector<size_t>& on) {
      std::vector<Release> releases;
      for (size_t k : on) {
        Release r{live[k].agent, {}};
        r.request.set_group_id(spec.group_id());
        *r.request.mutable_bundle_indexes() = per_node[k].bundle_indexes();
        releases.push_back(std::move(r));
      }
      send_releases(releases);
    };
    if (!refusal.empty()) {
      undo(reserved);
      std::lock_guard<std::mutex> lock(mu_);
      auto it = groups_.find(id);
      if (it != groups_.end() && it->second.info.state() != proto::PlacementGroupInfo::REMOVED)
        it->second.info.set_message("waiting for room: " + refusal);
      continue;
    }
    // Count the reservations in the ledgers, for the groups after this one.
    for (size_t i = 0; i < bundles.size(); ++i)
      if (fixed[i] < 0) (void)live[static_cast<size_t>((*plan)[i])].ledger->allocate(bundles[i]);
    std::vector<std::function<void()>> starts;
    bool removed = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = groups_.find(id);
      removed = it == groups_.end() || it->second.info.state() == proto::PlacementGroupInfo::REMOVED;
      if (!removed) {
        auto& info = it->second.info;
        for (size_t i = 0; i < bundles.size(); ++i) {
          const Candidate& c = live[static_cast<size_t>((*plan)[i])];
          info.set_bundle_node_ids(static_cast<int>(i), c.id.binary());
          info.set_bundle_agent_addresses(static_cast<int>(i), c.address);
        }
        info.set_state(proto::PlacementGroupInfo::CREATED);
        info.set_message("");
        GANTRY_LOG_INFO("{} placed: all {} bundle(s) reserved", group_label(spec), bundles.size());
        for (auto& [actor_id, actor] : actors_)
          if (actor.waiting_for_group && actor.spec.strategy().placement_group_id() == spec.group_id())
            if (auto start = place_actor_locked(actor)) starts.push_back(std::move(start));
        cv_.notify_all();
      }
    }
    if (removed) undo(reserved);  // removed while it was being reserved
    for (auto& start : starts) start();
  }
}

}  // namespace gantry::internal
