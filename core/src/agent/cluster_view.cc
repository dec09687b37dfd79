#include "agent/cluster_view.h"

#include "common/logging.h"
#include "rpc/grpc_util.h"

namespace gantry::internal {

ClusterView::ClusterView(std::shared_ptr<proto::Head::Stub> head, std::chrono::milliseconds max_age)
    : head_(std::move(head)), max_age_(max_age) {}

bool ClusterView::refresh_locked(std::string* error) {
  proto::Empty req;
  proto::ClusterView reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Status s = head_->GetClusterView(&ctx, req, &reply);
  if (!s.ok()) {
    if (error) *error = "cannot reach the head for the cluster's nodes: " + s.error_message();
    return false;
  }
  std::vector<Node> nodes;
  for (const auto& n : reply.nodes()) {
    Node node;
    node.id = UniqueId::from_binary(n.node_id());
    node.agent_address = n.agent_address();
    node.object_address = n.object_address();
    node.alive = n.alive();
    try {
      node.shape = std::make_shared<NodeResources>(from_proto(n.total()), n.num_gpus());
      node.available = from_proto(n.available());
    } catch (const std::exception& e) {
      GANTRY_LOG_WARN("ignoring node {} with bad resources: {}", node.id.short_hex(), e.what());
      continue;
    }
    nodes.push_back(std::move(node));
  }
  nodes_ = std::move(nodes);
  fetched_ = std::chrono::steady_clock::now();
  fetched_once_ = true;
  return true;
}

std::vector<ClusterView::Node> ClusterView::nodes(std::string* error, bool fresh) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fresh || !fetched_once_ || std::chrono::steady_clock::now() - fetched_ >= max_age_) refresh_locked(error);
  return nodes_;
}

std::optional<ClusterView::Node> ClusterView::find(const UniqueId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    for (const auto& n : nodes_)
      if (n.id == id) return n;
    if (attempt == 0 && !refresh_locked(nullptr)) break;
  }
  return std::nullopt;
}

void ClusterView::charge(const UniqueId& id, const ResourceSet& request) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& n : nodes_)
    if (n.id == id && n.available.contains(request)) n.available -= request;
}

}  // namespace gantry::internal
