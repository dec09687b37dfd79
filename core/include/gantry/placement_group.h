#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "gantry/options.h"

namespace gantry {

/// Resources reserved together on the cluster: bundles laid out by a PlacementStrategy,
/// all reserved or none. Tasks and actors run in a bundle with
/// `.scheduling = gantry::SchedulingStrategy::placement_group(pg, index)`.
///
///     auto pg = gantry::create_placement_group({.bundles = {{{"CPU", 1}, {"GPU", 1}}, {{"CPU", 1}, {"GPU", 1}}},
///                                               .strategy = gantry::PlacementStrategy::kStrictSpread});
///     if (!pg.wait(std::chrono::seconds(10))) { /* the cluster has no room yet */ }
///     gantry::task(train).options({.num_gpus = 1,
///                                  .scheduling = gantry::SchedulingStrategy::placement_group(pg, 0)}).remote();
///     gantry::remove_placement_group(pg);
///
/// A handle is a cheap copy; the group lives until removed or until its job ends.
class PlacementGroup {
 public:
  PlacementGroup() = default;
  PlacementGroup(std::string id, PlacementGroupOptions options) : id_(std::move(id)), options_(std::move(options)) {}

  /// 32 hex digits; empty for a default-constructed handle.
  const std::string& id() const { return id_; }
  const std::vector<Bundle>& bundles() const { return options_.bundles; }
  PlacementStrategy strategy() const { return options_.strategy; }
  const std::string& name() const { return options_.name; }

  /// Waits up to `timeout` until every bundle is reserved. True when they are; false on
  /// timeout or when the group was removed.
  bool wait(std::chrono::milliseconds timeout) const;

  /// Per bundle, the id of the node holding it (as `gantry::nodes()` gives it), or an
  /// empty string for a bundle not placed yet (the group is pending, or rescheduling
  /// after a node died). Asks the head; throws gantry::Error for an empty handle.
  std::vector<std::string> bundle_nodes() const;

 private:
  std::string id_;
  PlacementGroupOptions options_;
};

/// Registers a placement group with the cluster and returns at once; the bundles are
/// reserved as soon as nodes have room (see PlacementGroup::wait). Throws
/// gantry::InfeasibleError when no layout of the bundles on the cluster's nodes could
/// ever hold them (say STRICT_SPREAD of three bundles on two nodes), and gantry::Error for
/// an empty or invalid bundle or a name in use.
PlacementGroup create_placement_group(PlacementGroupOptions options);
/// Frees the group's reservations. Tasks and actors running in it are stopped; work
/// still waiting for it fails with gantry::InfeasibleError. Removing twice is harmless.
void remove_placement_group(const PlacementGroup& group);
/// The live (not removed) group of that name, if any.
std::optional<PlacementGroup> get_placement_group(const std::string& name);

}  // namespace gantry
