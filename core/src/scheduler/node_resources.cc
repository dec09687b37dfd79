#include "scheduler/node_resources.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace gantry::internal {

std::vector<int> Allocation::gpu_ids() const {
  std::vector<int> ids;
  for (const GpuShare& s : gpus) ids.push_back(s.device);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

NodeResources::NodeResources(ResourceSet total, int num_gpu_devices)
    : total_(std::move(total)), available_(total_), gpus_(num_gpu_devices) {
  if (total_.get(kGpu) != FixedPoint::whole(num_gpu_devices)) {
    throw std::invalid_argument("node total " + total_.to_string() +
                                " has GPU: " + total_.get(kGpu).to_string() + " but " +
                                std::to_string(num_gpu_devices) + " GPU devices");
  }
}

NodeResources::NodeResources(ResourceSet total, std::vector<FixedPoint> gpu_capacities)
    : total_(std::move(total)), available_(total_), gpus_(gpu_capacities) {
  FixedPoint sum;
  for (FixedPoint c : gpu_capacities) sum += c;
  if (total_.get(kGpu) != sum)
    throw std::invalid_argument("total " + total_.to_string() + " has GPU: " + total_.get(kGpu).to_string() +
                                " but its devices hold " + sum.to_string());
}

std::string NodeResources::infeasible_reason(const ResourceSet& request) const {
  // Report every problem, not just the first: the user fixes them all in one go.
  std::string reason;
  auto add = [&reason](const std::string& problem) {
    if (!reason.empty()) reason += "; ";
    reason += problem;
  };
  for (const auto& [name, q] : request.quantities()) {
    const std::string asked = "asks for " + name + ": " + q.to_string();
    if (name == kGpu && !GpuAllocator::is_valid_request(q)) {
      add(asked + ": GPU requests above 1 must be whole numbers");
    } else if (total_.get(name) == FixedPoint()) {
      add(asked + " but the node has no " + name);
    } else if (total_.get(name) < q) {
      add(asked + " but the node has " + name + ": " + total_.get(name).to_string());
    }
  }
  return reason;
}

std::optional<Allocation> NodeResources::allocate(const ResourceSet& request) {
  if (!available_.contains(request)) return std::nullopt;
  // The GPU allocator is the only step that can still refuse (capacity free in total but
  // split over devices), so it runs before anything is subtracted.
  std::optional<std::vector<GpuShare>> shares = gpus_.allocate(request.get(kGpu));
  if (!shares) return std::nullopt;
  available_ -= request;
  return Allocation{request, std::move(*shares)};
}

void NodeResources::force_acquire(const ResourceSet& resources) {
  if (resources.get(kGpu) != FixedPoint()) throw std::logic_error("force_acquire cannot take GPUs");
  for (const auto& [name, q] : resources.quantities()) {
    FixedPoint have = available_.get(name);
    FixedPoint take = have < q ? have : q;
    available_.set(name, have - take);
    if (take < q) debt_.set(name, debt_.get(name) + (q - take));
  }
}

void NodeResources::release(const Allocation& a) {
  ResourceSet returned = a.resources;
  ResourceSet debt = debt_;
  // Repay oversubscription first: those resources are in use by the unblocked task.
  for (const auto& [name, owed] : debt_.quantities()) {
    FixedPoint back = returned.get(name);
    FixedPoint pay = back < owed ? back : owed;
    returned.set(name, back - pay);
    debt.set(name, owed - pay);
  }
  ResourceSet freed = available_;
  freed += returned;
  if (!total_.contains(freed)) {
    throw std::logic_error("releasing " + a.resources.to_string() + " with " +
                           available_.to_string() + " free would exceed the node's total " +
                           total_.to_string() + " (released twice?)");
  }
  FixedPoint share_sum;
  for (const GpuShare& s : a.gpus) share_sum += s.amount;
  if (share_sum != a.resources.get(kGpu)) {
    throw std::logic_error("released allocation has GPU: " + a.resources.get(kGpu).to_string() +
                           " but its device shares add up to " + share_sum.to_string());
  }
  gpus_.release(a.gpus);  // throws before changing anything when a share is bad
  available_ = std::move(freed);
  debt_ = std::move(debt);
}

}  // namespace gantry::internal
