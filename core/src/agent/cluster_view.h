#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gantry/head.grpc.pb.h"
#include "gantry/ids.h"
#include "scheduler/node_resources.h"

namespace gantry::internal {

/// An agent's picture of the other nodes, for sending work and fetching objects there:
/// the head's node table with what each node had free at its last health check. Fetched
/// again when older than `max_age`. Thread-safe.
class ClusterView {
 public:
  struct Node {
    UniqueId id;
    std::string agent_address;
    std::string object_address;  // its object port, or empty
    std::string hostname;
    std::shared_ptr<const NodeResources> shape;  // totals
    ResourceSet available;
    bool alive = true;
  };

  ClusterView(std::shared_ptr<proto::Head::Stub> head, std::chrono::milliseconds max_age);

  /// The nodes in joining order; asks the head first when the copy is stale (or `fresh`).
  /// When the head cannot be reached the old copy is kept (and `error`, if given, says why).
  std::vector<Node> nodes(std::string* error = nullptr, bool fresh = false);
  /// One node, asking the head again when it is not known yet.
  std::optional<Node> find(const UniqueId& id);
  /// Work of `request` was sent to `id`: count it as taken there until the next refresh,
  /// so a burst of requests does not all go to the node that looked free.
  void charge(const UniqueId& id, const ResourceSet& request);

 private:
  bool refresh_locked(std::string* error);

  std::shared_ptr<proto::Head::Stub> head_;
  const std::chrono::milliseconds max_age_;
  std::mutex mu_;  // guards the copy; held across the refresh call so one caller asks
  std::vector<Node> nodes_;
  std::chrono::steady_clock::time_point fetched_{};
  bool fetched_once_ = false;
};

}  // namespace gantry::internal
