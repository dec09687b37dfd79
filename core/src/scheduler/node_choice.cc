#include "scheduler/node_choice.h"

namespace gantry::internal {
namespace {

bool can_ever_hold(const NodeCandidate& n, const ResourceSet& request, std::string* why) {
  if (!n.alive) {
    *why = "needs a node that is alive";
    return false;
  }
  std::string reason = n.shape->infeasible_reason(request);
  if (reason.empty()) return true;
  *why = reason;
  return false;
}

NodeChoice choose_default(const std::vector<NodeCandidate>& nodes, const ResourceSet& request, int local) {
  NodeChoice choice;
  std::string why;
  bool local_ok = local >= 0 && can_ever_hold(nodes[local], request, &why);
  if (local_ok && nodes[local].available.contains(request)) return {local, {}};
  int first_feasible = -1;
  for (int i = 0; i < static_cast<int>(nodes.size()); ++i) {
    if (i == local || !can_ever_hold(nodes[i], request, &why)) continue;
    if (nodes[i].available.contains(request)) return {i, {}};
    if (first_feasible < 0) first_feasible = i;
  }
  if (local_ok) return {local, {}};
  if (first_feasible >= 0) return {first_feasible, {}};
  choice.why = nodes.empty() ? "finds no nodes in the cluster" : why;
  return choice;
}

}  // namespace

NodeChoice choose_node(const std::vector<NodeCandidate>& nodes, const ResourceSet& request,
                       const Placement& placement, int local, uint64_t* spread_cursor) {
  switch (placement.kind) {
    case Placement::Kind::kDefault:
      return choose_default(nodes, request, local);
    case Placement::Kind::kSpread: {
      std::vector<int> with_room, feasible;
      std::string why = nodes.empty() ? "finds no nodes in the cluster" : "";
      for (int i = 0; i < static_cast<int>(nodes.size()); ++i) {
        if (!can_ever_hold(nodes[i], request, &why)) continue;
        feasible.push_back(i);
        if (nodes[i].available.contains(request)) with_room.push_back(i);
      }
      const std::vector<int>& pool = with_room.empty() ? feasible : with_room;
      if (pool.empty()) return {-1, why};
      return {pool[(*spread_cursor)++ % pool.size()], {}};
    }
    case Placement::Kind::kNodeAffinity: {
      std::string why = "asks for node " + placement.node.short_hex() + ", which is not in the cluster";
      for (int i = 0; i < static_cast<int>(nodes.size()); ++i) {
        if (nodes[i].id != placement.node) continue;
        std::string reason;
        if (can_ever_hold(nodes[i], request, &reason)) return {i, {}};
        why = "asks for node " + placement.node.short_hex() + ", which " +
              (nodes[i].alive ? "cannot hold it (it " + reason + ")" : std::string("is dead"));
        break;
      }
      if (placement.soft) return choose_default(nodes, request, local);
      return {-1, why};
    }
    case Placement::Kind::kPlacementGroup:
      return {-1, "is placed by its placement group, not by node choice"};
  }
  return {-1, "has an unknown scheduling strategy"};
}

}  // namespace gantry::internal
