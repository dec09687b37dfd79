#include "scheduler/bundles.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace gantry::internal {
namespace {

std::vector<FixedPoint> capacities_of(const Allocation& reserved) {
  std::vector<FixedPoint> out;
  for (const GpuShare& share : reserved.gpus) out.push_back(share.amount);
  return out;
}

// Depth-first search over bundle -> node assignments (see plan_bundles).
class Search {
 public:
  Search(std::vector<NodeResources> nodes, const std::vector<ResourceSet>& bundles, BundleStrategy strategy,
         std::vector<int> assign, size_t budget)
      : nodes_(std::move(nodes)), bundles_(bundles), strategy_(strategy), assign_(std::move(assign)),
        count_(nodes_.size(), 0), budget_(budget) {
    for (int node : assign_)
      if (node >= 0) ++count_[static_cast<size_t>(node)];
  }

  std::optional<std::vector<int>> run() {
    if (!fixed_consistent()) return std::nullopt;
    if (!place(0)) return std::nullopt;
    return assign_;
  }

 private:
  bool fixed_consistent() const {
    int used = 0, first = -1;
    for (size_t k = 0; k < count_.size(); ++k) {
      if (count_[k] == 0) continue;
      ++used;
      if (first < 0) first = static_cast<int>(k);
      if (strategy_ == BundleStrategy::kStrictSpread && count_[k] > 1) return false;
    }
    return strategy_ != BundleStrategy::kStrictPack || used <= 1;
  }

  std::vector<size_t> candidates() const {
    std::vector<size_t> order(nodes_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    switch (strategy_) {
      case BundleStrategy::kStrictPack:
        for (size_t k = 0; k < count_.size(); ++k)
          if (count_[k] > 0) return {k};
        return order;
      case BundleStrategy::kStrictSpread:
        order.erase(std::remove_if(order.begin(), order.end(), [&](size_t k) { return count_[k] > 0; }), order.end());
        return order;
      case BundleStrategy::kPack:
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return count_[a] > count_[b]; });
        return order;
      case BundleStrategy::kSpread:
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return count_[a] < count_[b]; });
        return order;
    }
    return order;
  }

  bool place(size_t i) {
    while (i < bundles_.size() && assign_[i] >= 0) ++i;
    if (i == bundles_.size()) return true;
    for (size_t k : candidates()) {
      if (budget_ == 0) return false;
      --budget_;
      std::optional<Allocation> a = nodes_[k].allocate(bundles_[i]);
      if (!a) continue;
      assign_[i] = static_cast<int>(k);
      ++count_[k];
      if (place(i + 1)) return true;
      assign_[i] = -1;
      --count_[k];
      nodes_[k].release(*a);
    }
    return false;
  }

  std::vector<NodeResources> nodes_;
  const std::vector<ResourceSet>& bundles_;
  const BundleStrategy strategy_;
  std::vector<int> assign_;
  std::vector<int> count_;  // bundles of the group per node
  size_t budget_;
};

}  // namespace

const char* to_string(BundleStrategy strategy) {
  switch (strategy) {
    case BundleStrategy::kPack: return "PACK";
    case BundleStrategy::kSpread: return "SPREAD";
    case BundleStrategy::kStrictPack: return "STRICT_PACK";
    case BundleStrategy::kStrictSpread: return "STRICT_SPREAD";
  }
  return "?";
}

BundleLedger::BundleLedger(Allocation reserved)
    : reserved_(std::move(reserved)), inner_(reserved_.resources, capacities_of(reserved_)) {
  for (const GpuShare& share : reserved_.gpus) device_of_.push_back(share.device);
}

std::string BundleLedger::infeasible_reason(const ResourceSet& request) const {
  std::string reason;
  auto add = [&reason](const std::string& problem) {
    if (!reason.empty()) reason += "; ";
    reason += problem;
  };
  int whole_devices = 0;
  for (const GpuShare& share : reserved_.gpus) whole_devices += share.amount == FixedPoint::whole(1);
  for (const auto& [name, q] : request.quantities()) {
    const std::string asked = "asks for " + name + ": " + q.to_string();
    FixedPoint held = reserved_.resources.get(name);
    if (name == kGpu && !GpuAllocator::is_valid_request(q))
      add(asked + ": GPU requests above 1 must be whole numbers");
    else if (held == FixedPoint())
      add(asked + " but the bundle holds no " + name);
    else if (held < q)
      add(asked + " but the bundle holds " + name + ": " + held.to_string());
    else if (name == kGpu && q.is_whole() && q.raw() / kResourceUnit > whole_devices)
      add(asked + " but the bundle holds only part of a GPU");
  }
  return reason;
}

std::optional<Allocation> BundleLedger::allocate(const ResourceSet& request) {
  std::optional<Allocation> a = inner_.allocate(request);
  if (!a) return std::nullopt;
  for (GpuShare& share : a->gpus) share.device = device_of_[static_cast<size_t>(share.device)];
  return a;
}

void BundleLedger::release(const Allocation& a) {
  Allocation inner = a;
  for (GpuShare& share : inner.gpus) {
    auto it = std::find(device_of_.begin(), device_of_.end(), share.device);
    if (it == device_of_.end())
      throw std::logic_error("released GPU " + std::to_string(share.device) + " is not part of the bundle");
    share.device = static_cast<int>(it - device_of_.begin());
  }
  inner_.release(inner);
}

std::optional<std::vector<int>> plan_bundles(std::vector<NodeResources> nodes, const std::vector<ResourceSet>& bundles,
                                             BundleStrategy strategy, const std::vector<int>& fixed, size_t budget) {
  std::vector<int> assign = fixed;
  assign.resize(bundles.size(), -1);
  for (int node : assign)
    if (node >= static_cast<int>(nodes.size())) throw std::invalid_argument("a fixed bundle names an unknown node");
  return Search(std::move(nodes), bundles, strategy, std::move(assign), budget).run();
}

std::string bundles_infeasible_reason(const std::vector<NodeResources>& nodes, const std::vector<ResourceSet>& bundles,
                                      BundleStrategy strategy) {
  if (nodes.empty()) return "the cluster has no live node";
  for (size_t i = 0; i < bundles.size(); ++i) {
    bool fits = false;
    for (const auto& node : nodes) fits |= node.infeasible_reason(bundles[i]).empty();
    if (!fits)
      return "bundle " + std::to_string(i) + " " + bundles[i].to_string() + " fits on no node: it " +
             nodes.front().infeasible_reason(bundles[i]) + (nodes.size() > 1 ? " (and so on for every node)" : "");
  }
  if (strategy == BundleStrategy::kStrictSpread && bundles.size() > nodes.size())
    return "STRICT_SPREAD needs its own node for each of its " + std::to_string(bundles.size()) +
           " bundles but the cluster has " + std::to_string(nodes.size()) + " live node(s)";
  if (plan_bundles(nodes, bundles, strategy)) return {};
  if (strategy == BundleStrategy::kStrictPack) {
    ResourceSet sum;
    for (const auto& b : bundles) sum += b;
    return "STRICT_PACK needs one node holding all its bundles, " + sum.to_string() + " together, and no node does";
  }
  return std::string("no assignment of its bundles to the cluster's nodes satisfies ") + to_string(strategy);
}

}  // namespace gantry::internal
