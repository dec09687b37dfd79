#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gantry/ids.h"
#include "scheduler/node_resources.h"
#include "scheduler/resource_set.h"

namespace gantry::internal {

/// How work picks its node (TaskOptions::scheduling, ActorOptions::scheduling).
struct Placement {
  enum class Kind { kDefault, kSpread, kNodeAffinity, kPlacementGroup };
  Kind kind = Kind::kDefault;
  UniqueId node;      // kNodeAffinity only
  bool soft = false;  // kNodeAffinity: run elsewhere when that node cannot
  UniqueId group;     // kPlacementGroup: the group, and its bundle (-1: any)
  int bundle = -1;
};

/// One node as a scheduler sees it: its totals (for feasibility) and what was free when
/// it last reported (for preference; may be stale).
struct NodeCandidate {
  UniqueId id;
  const NodeResources* shape = nullptr;  // not owned
  ResourceSet available;
  bool alive = true;
};

struct NodeChoice {
  int index = -1;    // into the candidates; -1: none can ever hold the request
  std::string why;   // when index < 0: why not, naming the request's obstacle
};

/// Picks the node for `request`. Candidates are in registration order; `local` is the
/// index of the node asking (-1 when none, as for the head placing actors).
///   kDefault: `local` while it has room now; else the first node with room now; else
///     `local` if it can ever hold it (the request queues there); else the first that can.
///   kSpread: round robin (`*spread_cursor` advances) over the nodes with room now, or
///     over those that can ever hold it when none has room.
///   kNodeAffinity: that node if alive and able to ever hold it; else, when soft, as
///     kDefault; else none, saying why.
/// Dead nodes are never chosen. kPlacementGroup is not decided here (the bundle's node
/// is); it gets index -1.
NodeChoice choose_node(const std::vector<NodeCandidate>& nodes, const ResourceSet& request,
                       const Placement& placement, int local, uint64_t* spread_cursor);

}  // namespace gantry::internal
