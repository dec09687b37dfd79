#include "checkpoint_manager.h"

#include <algorithm>

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

}  // namespace gantry::train::detail
