#include "dashboard_record.h"

#include <algorithm>
#include <initializer_list>

namespace gantry::train::detail {
namespace {

// An error message longer than this is cut (a record stays small).
constexpr size_t kMaxErrorBytes = 16u << 10;

double unix_now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// Metrics may hold strings that are not UTF-8: those are written with replacement
// characters instead of failing the write.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

Json numeric_only(const Json& metrics) {
  Json out = Json::object();
  if (!metrics.is_object()) return out;
  for (auto it = metrics.begin(); it != metrics.end(); ++it) {
    if (it.value().is_number()) out[it.key()] = it.value();
  }
  return out;
}

}  // namespace

DashboardRecord::DashboardRecord(std::string name, std::string run_path, std::string job_id, int num_workers,
                                 bool use_gpu, Sink sink)
    : name_(std::move(name)),
      run_path_(std::move(run_path)),
      job_id_(std::move(job_id)),
      started_(unix_now()),
      num_workers_(num_workers),
      use_gpu_(use_gpu),
      publisher_(key_of(name_), "[train " + name_ + "]", std::move(sink)) {}

void DashboardRecord::set_workers(std::vector<Worker> workers) {
  workers_ = std::move(workers);
  num_workers_ = static_cast<int>(workers_.size());
  publisher_.mark_changed();
}

void DashboardRecord::add_report(int64_t iteration, const Json& metrics, std::optional<double> time) {
  iterations_ = iteration;
  last_metrics_ = metrics;
  if (metrics.is_object()) {
    for (auto it = metrics.begin(); it != metrics.end() && metric_names_.size() < kMaxMetricNames; ++it) {
      metric_names_.insert(it.key());
    }
  }
  history_.offer([&] { return HistoryPoint{iteration, time, numeric_only(metrics)}; });
  publisher_.mark_changed();
}

void DashboardRecord::set_checkpoints(std::vector<CheckpointSummary> kept) {
  if (kept.size() > kMaxCheckpoints) kept.erase(kept.begin(), kept.end() - kMaxCheckpoints);
  checkpoints_ = std::move(kept);
  publisher_.mark_changed();
}

void DashboardRecord::add_failure() {
  ++failures_;
  publisher_.mark_changed();
}

void DashboardRecord::set_state(const std::string& state, const std::string& error) {
  state_ = state;
  error_ = error.size() > kMaxErrorBytes ? error.substr(0, kMaxErrorBytes) + "..." : error;
  publisher_.publish([this] { return text(); }, Clock::now());
}

void DashboardRecord::publish_if_due(Clock::time_point now) {
  publisher_.publish_if_due([this] { return text(); }, now);
}

Json DashboardRecord::build(size_t history_points, bool brief) const {
  Json workers = Json::array();
  for (const Worker& w : workers_) {
    workers.push_back({{"rank", w.rank}, {"node_id", w.node_id}, {"pid", w.pid}, {"gpu_ids", w.gpu_ids}});
  }
  Json history = Json::array();
  const auto& points = history_.points();
  size_t shown = std::min(points.size(), history_points);
  for (size_t k = 0; k < shown; ++k) {
    const HistoryPoint& p = points[k * points.size() / shown];  // evenly spread when fewer are shown
    history.push_back(
        {{"iteration", p.iteration}, {"time", p.time ? Json(*p.time) : Json(nullptr)}, {"metrics", p.metrics}});
  }
  Json checkpoints = Json::array();
  for (const CheckpointSummary& c : checkpoints_) {
    checkpoints.push_back(
        {{"path", c.path}, {"iteration", c.iteration}, {"metrics", brief ? Json::object() : c.metrics}});
  }
  Json samples_per_second = nullptr;
  if (last_metrics_.is_object()) {
    for (const char* name : {"samples_per_second", "throughput"}) {
      auto it = last_metrics_.find(name);
      if (it != last_metrics_.end() && it->is_number()) {
        samples_per_second = *it;
        break;
      }
    }
  }
  return Json{{"kind", "train"},
              {"name", name_},
              {"storage_path", run_path_},
              {"state", state_},
              {"started", started_},
              {"updated", unix_now()},
              {"job_id", job_id_.empty() ? Json(nullptr) : Json(job_id_)},
              {"num_workers", num_workers_},
              {"use_gpu", use_gpu_},
              {"failures", failures_},
              {"workers", std::move(workers)},
              {"iterations", iterations_},
              {"samples_per_second", samples_per_second},
              {"last_metrics", brief ? numeric_only(last_metrics_) : last_metrics_},
              {"metric_names", metric_names_},
              {"history", std::move(history)},
              {"checkpoints", std::move(checkpoints)},
              {"error", error_.empty() ? Json(nullptr) : Json(error_)}};
}

std::string DashboardRecord::text() const {
  std::string text = dump(build(kMaxHistory, false));
  if (text.size() <= kMaxBytes) return text;
  // Large metrics: the brief record, with as many history points as fit in what is left
  // (their size estimated from the full record's, generously).
  std::string bare = dump(build(0, true));
  size_t shown = std::min(history_.points().size(), kMaxHistory);
  double per_point = static_cast<double>(text.size() - std::min(text.size(), bare.size())) /
                     static_cast<double>(std::max<size_t>(shown, 1));
  size_t fit = 0;
  if (bare.size() < kMaxBytes && per_point > 0) {
    fit = static_cast<size_t>(0.9 * static_cast<double>(kMaxBytes - bare.size()) / per_point);
  }
  return fit > 0 ? dump(build(fit, true)) : bare;
}

}  // namespace gantry::train::detail
