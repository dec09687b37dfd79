#pragma once

#include <optional>
#include <string>
#include <vector>

#include "scheduler/gpu_allocator.h"
#include "scheduler/resource_set.h"

namespace gantry::internal {

/// What one granted request holds on a node: the quantities, and which GPU devices its GPU
/// quantity sits on.
struct Allocation {
  ResourceSet resources;
  std::vector<GpuShare> gpus;

  /// The distinct device ids in `gpus`, ascending: what the worker's CUDA_VISIBLE_DEVICES
  /// and `gantry::get_gpu_ids()` show.
  std::vector<int> gpu_ids() const;
};

/// One node's capacity and what of it is in use, with GPUs tracked per device.
/// Not thread-safe: the owner holds a lock.
///
///     NodeResources node(ResourceSet::from_doubles({{kCpu, 4}, {kGpu, 2}}), 2);
///     if (auto a = node.allocate(request)) { ...; node.release(*a); }
class NodeResources {
 public:
  /// A node offering `total`, all of it free. `total`'s GPU quantity must equal
  /// `num_gpu_devices`; throws std::invalid_argument otherwise.
  NodeResources(ResourceSet total, int num_gpu_devices);
  /// A ledger over part of a node (a placement-group bundle): GPU devices 0..n-1 with the
  /// given capacities, whose sum must equal `total`'s GPU quantity.
  NodeResources(ResourceSet total, std::vector<FixedPoint> gpu_capacities);

  /// Empty when `request` could be granted on this node when it is idle; otherwise a
  /// sentence naming each problem, e.g. "asks for GPU: 3 but the node has GPU: 2",
  /// "asks for TPU: 1 but the node has no TPU", or
  /// "asks for GPU: 1.5: GPU requests above 1 must be whole numbers".
  std::string infeasible_reason(const ResourceSet& request) const;

  /// Grants `request` if it fits now, all or nothing: on nullopt nothing has changed. The GPU
  /// quantity is placed on devices by GpuAllocator, so it can fail even when enough GPU
  /// capacity is free in total but not on the right devices.
  std::optional<Allocation> allocate(const ResourceSet& request);

  /// Gives back what `allocate` returned. Throws std::logic_error, changing nothing, when the
  /// allocation was not granted here (more than total would be free, or its GPU shares do
  /// not add up to its GPU quantity).
  void release(const Allocation& a);

  /// Takes non-GPU `resources` back for a task that was lent out while blocked, even when
  /// others hold them now: what is not free becomes a debt that later releases repay
  /// before anything is free again. The node is briefly oversubscribed instead of the
  /// unblocked task stalled.
  void force_acquire(const ResourceSet& resources);
  /// Quantities taken by force_acquire and not yet repaid.
  const ResourceSet& debt() const { return debt_; }

  const ResourceSet& total() const { return total_; }
  /// Free quantities; the GPU quantity is the sum of the devices' free capacities.
  const ResourceSet& available() const { return available_; }
  const GpuAllocator& gpus() const { return gpus_; }

 private:
  ResourceSet total_;
  ResourceSet available_;  // invariant: contained in total_
  GpuAllocator gpus_;      // invariant: free capacities sum to available_.get(kGpu)
  ResourceSet debt_;       // oversubscription from force_acquire; no GPU
};

}  // namespace gantry::internal
