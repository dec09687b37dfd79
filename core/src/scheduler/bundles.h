#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "scheduler/node_resources.h"
#include "scheduler/resource_set.h"

namespace gantry::internal {

/// How a placement group's bundles spread over nodes (gantry::PlacementStrategy).
enum class BundleStrategy {
  kPack,          // as few nodes as possible, more when they must
  kSpread,        // as many nodes as possible, sharing when they must
  kStrictPack,    // all on one node, or not at all
  kStrictSpread,  // each on its own node, or not at all
};

const char* to_string(BundleStrategy strategy);

/// What one reserved bundle holds of its node, and what of that its leases use. Leases
/// in the bundle allocate from here instead of from the node; GPU device ids are the
/// node's. Not thread-safe: the agent holds its lock.
///
///     auto reserved = node.allocate(bundle);            // the node's share for the bundle
///     BundleLedger ledger(*reserved);
///     if (auto a = ledger.allocate(request)) { ...; ledger.release(*a); }
///     node.release(ledger.reserved());                  // the group is removed
class BundleLedger {
 public:
  explicit BundleLedger(Allocation reserved);

  /// Empty when `request` fits the bundle when it is idle, else why not ("asks for CPU: 2
  /// but the bundle holds CPU: 1").
  std::string infeasible_reason(const ResourceSet& request) const;
  /// Grants `request` from the bundle if it fits now; nothing changes on nullopt.
  std::optional<Allocation> allocate(const ResourceSet& request);
  /// Gives back what allocate returned. Throws std::logic_error on a double release.
  void release(const Allocation& a);

  const Allocation& reserved() const { return reserved_; }
  const ResourceSet& available() const { return inner_.available(); }

 private:
  Allocation reserved_;
  NodeResources inner_;      // GPU devices 0..k-1 stand for device_of_[0..k-1]
  std::vector<int> device_of_;
};

/// Chooses a node for every bundle of a placement group, all or none.
///
/// `nodes` are the ledgers of the candidate nodes, with what is in use now already
/// allocated (a copy: the function allocates on it while it searches). `fixed[i] >= 0`
/// says bundle i already sits on that node (reserved earlier; not allocated again), -1
/// that it needs a node; `fixed` may be empty (none placed). Nodes are preferred in the
/// given order: PACK fills nodes that already hold the group's bundles first, SPREAD the
/// ones holding fewest. The search backtracks, giving up after `budget` tries.
///
/// Returns the node index of every bundle, or nullopt when no assignment exists (or
/// none was found within the budget).
std::optional<std::vector<int>> plan_bundles(std::vector<NodeResources> nodes, const std::vector<ResourceSet>& bundles,
                                             BundleStrategy strategy, const std::vector<int>& fixed = {},
                                             size_t budget = 100000);

/// Why no cluster of `nodes` (ledgers at their totals) can ever hold the bundles, in a
/// sentence; empty when one can (as far as the search could tell).
std::string bundles_infeasible_reason(const std::vector<NodeResources>& nodes, const std::vector<ResourceSet>& bundles,
                                      BundleStrategy strategy);

}  // namespace gantry::internal
