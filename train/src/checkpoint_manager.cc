#include "checkpoint_manager.h"

#include <algorithm>
#include <map>

namespace gantry::train::detail {

std::optional<double> CheckpointManager::score(const Entry& e) const {
  if (config_.score_attribute.empty()) return std::nullopt;
  auto it = e.metrics.find(config_.score_attribute);
  if (it == e.metrics.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

bool CheckpointManager::better(const Entry& a, const Entry& b) const {
  if (!config_.score_attribute.empty()) {
    auto sa = score(a), sb = score(b);
    if (sa.has_value() != sb.has_value()) return sa.has_value();
    if (sa.has_value() && *sa != *sb) return config_.score_order == kMin ? *sa < *sb : *sa > *sb;
  }
  return a.index > b.index;  // newer first on ties and without a score
}

std::vector<CheckpointManager::Entry> CheckpointManager::add(Entry entry) {
  next_index_ = std::max(next_index_, entry.index + 1);
  kept_.push_back(std::move(entry));
  std::sort(kept_.begin(), kept_.end(), [](const Entry& a, const Entry& b) { return a.index < b.index; });
  std::vector<Entry> dropped;
  if (config_.num_to_keep <= 0 || static_cast<int>(kept_.size()) <= config_.num_to_keep) return dropped;
  Entry latest = kept_.back();
  std::vector<Entry> others(kept_.begin(), kept_.end() - 1);
  std::stable_sort(others.begin(), others.end(), [&](const Entry& a, const Entry& b) { return better(a, b); });
  size_t keep = static_cast<size_t>(config_.num_to_keep - 1);
  dropped.assign(others.begin() + static_cast<std::ptrdiff_t>(std::min(keep, others.size())), others.end());
  others.resize(std::min(keep, others.size()));
  others.push_back(std::move(latest));
  std::sort(others.begin(), others.end(), [](const Entry& a, const Entry& b) { return a.index < b.index; });
  kept_ = std::move(others);
  return dropped;
}

std::optional<CheckpointManager::Entry> CheckpointManager::latest() const {
  if (kept_.empty()) return std::nullopt;
  return kept_.back();
}

RankLayout layout_ranks(const std::vector<std::string>& worker_nodes) {
  RankLayout out;
  size_t n = worker_nodes.size();
  out.world_rank.assign(n, 0);
  out.local_rank.assign(n, 0);
  out.node_rank.assign(n, 0);
  out.local_world_size.assign(n, 0);
  std::vector<std::string> order;  // nodes by first appearance
  std::map<std::string, std::vector<size_t>> members;
  for (size_t i = 0; i < n; ++i) {
    if (members.find(worker_nodes[i]) == members.end()) order.push_back(worker_nodes[i]);
    members[worker_nodes[i]].push_back(i);
  }
  int next = 0;
  for (size_t node = 0; node < order.size(); ++node) {
    const auto& workers = members[order[node]];
    for (size_t local = 0; local < workers.size(); ++local) {
      size_t w = workers[local];
      out.world_rank[w] = next++;
      out.local_rank[w] = static_cast<int>(local);
      out.node_rank[w] = static_cast<int>(node);
      out.local_world_size[w] = static_cast<int>(workers.size());
    }
  }
  out.num_nodes = static_cast<int>(order.size());
  return out;
}

}  // namespace gantry::train::detail
