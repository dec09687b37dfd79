#include "dashboard_record.h"

#include <algorithm>
#include <cmath>

#include "experiment_log.h"
#include "trial_files.h"

namespace gantry::tune::detail {
namespace {

// An error message longer than this is cut (a record stays small).
constexpr size_t kMaxErrorBytes = 16u << 10;

// Results may hold strings that are not UTF-8: those are written with replacement
// characters instead of failing the write.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// The value of `metric` in `result` as ResultGrid reads it: a number, NaN included.
std::optional<double> metric_of(const Json& result, const std::string& metric) {
  if (metric.empty()) return std::nullopt;
  const Json* leaf = find_flattened(result, metric);
  if (leaf == nullptr || !leaf->is_number()) return std::nullopt;
  return leaf->get<double>();
}

bool better(double a, double b, Mode mode) { return mode == kMin ? a < b : a > b; }

Json number_or_null(std::optional<double> v) { return v && std::isfinite(*v) ? Json(*v) : Json(nullptr); }

}  // namespace

DashboardRecord::DashboardRecord(Experiment experiment, const ExperimentState& state, Sink sink)
    : experiment_(std::move(experiment)),
      state_(state),
      started_(unix_now()),
      publisher_(key_of(experiment_.name), "[tune " + experiment_.name + "]", std::move(sink)) {}

void DashboardRecord::add_result(TrialSeries& series, const Json& result) {
  std::optional<double> value = metric_of(result, experiment_.metric);
  if (!value) return;
  int64_t iteration = result.value("training_iteration", int64_t{0});
  series.history.offer([&] { return std::pair{iteration, *value}; });
  // A NaN (a diverged loss) is never the best, as in ResultGrid.
  if (!std::isnan(*value) && (!series.best || better(*value, *series.best, experiment_.mode))) series.best = value;
}

void DashboardRecord::catch_up() {
  for (const TrialRecord& t : state_.records()) {
    TrialSeries& series = series_[t.trial_id];
    for (const Json& result : t.history) add_result(series, result);
  }
  publisher_.mark_changed();
}

void DashboardRecord::on_event(const Json& event) {
  publisher_.mark_changed();
  const std::string type = event.value("event", "");
  if (type == "result") {
    add_result(series_[event.value("id", "")], event.at("result"));
  } else if (type == "end" && event.value("restart", false)) {
    // Starts over from scratch: the state drops its results, and so does its history here.
    TrialSeries& series = series_[event.value("id", "")];
    std::string node_id = std::move(series.node_id);
    series = TrialSeries{};
    series.node_id = std::move(node_id);
  }
}

void DashboardRecord::set_node_id(const std::string& trial_id, const std::string& node_id) {
  std::string& known = series_[trial_id].node_id;
  if (known == node_id) return;
  known = node_id;
  publisher_.mark_changed();
}

void DashboardRecord::set_state(const std::string& state, const std::string& error) {
  state_name_ = state;
  error_ = error.size() > kMaxErrorBytes ? error.substr(0, kMaxErrorBytes) + "..." : error;
  publisher_.publish([this] { return text(); }, Clock::now());
}

void DashboardRecord::publish_if_due(Clock::time_point now) {
  publisher_.publish_if_due([this] { return text(); }, now);
}

DashboardRecord::Detail DashboardRecord::full_detail() const {
  size_t trials = std::max<size_t>(1, state_.records().size());
  return {.history_points = std::clamp<size_t>(kHistoryBudget / trials, 2, kMaxHistory)};
}

Json DashboardRecord::build(const Detail& detail) const {
  const auto& records = state_.records();
  Json counts = Json::object();
  for (TrialStatus s : {TrialStatus::kPending, TrialStatus::kRunning, TrialStatus::kPaused, TrialStatus::kTerminated,
                        TrialStatus::kError}) {
    counts[status_name(s)] = 0;
  }
  // The best trial as ResultGrid::best_result picks it: by its last result, the first
  // of equals.
  const TrialRecord* best = nullptr;
  double best_value = 0;
  for (const TrialRecord& t : records) {
    counts[status_name(t.status)] = counts[status_name(t.status)].get<int64_t>() + 1;
    std::optional<double> v = metric_of(t.last_result, experiment_.metric);
    if (!v || std::isnan(*v)) continue;
    if (best == nullptr || better(*v, best_value, experiment_.mode)) {
      best = &t;
      best_value = *v;
    }
  }
  Json trials = Json::array();
  size_t first = records.size() > detail.max_trials ? records.size() - detail.max_trials : 0;
  for (size_t i = first; i < records.size(); ++i) {
    const TrialRecord& t = records[i];
    auto found = series_.find(t.trial_id);
    const TrialSeries* series = found == series_.end() ? nullptr : &found->second;
    Json history = Json::array();
    if (series != nullptr) {
      const auto& points = series->history.points();
      size_t shown = std::min(points.size(), detail.history_points);
      for (size_t k = 0; k < shown; ++k) {
        const auto& [iteration, value] = points[k * points.size() / shown];  // evenly spread when fewer are shown
        history.push_back(Json::array({iteration, number_or_null(value)}));
      }
    }
    Json last = t.last_result;
    if (detail.brief && last.is_object()) {
      Json kept = Json::object();
      if (auto v = metric_of(last, experiment_.metric)) kept[experiment_.metric] = number_or_null(v);
      if (last.contains("training_iteration")) kept["training_iteration"] = last["training_iteration"];
      last = std::move(kept);
    }
    trials.push_back(
        {{"trial_id", t.trial_id},
         {"status", status_name(t.status)},
         {"config", t.config},
         {"iterations", t.iteration},
         {"last", std::move(last)},
         {"best", series != nullptr ? number_or_null(series->best) : Json(nullptr)},
         {"node_id", series != nullptr && !series->node_id.empty() ? Json(series->node_id) : Json(nullptr)},
         {"error", t.error.empty() ? Json(nullptr) : Json(t.error)},
         {"history", std::move(history)}});
  }
  Json record = {
      {"kind", "tune"},
      {"name", experiment_.name},
      {"path", experiment_.path},
      {"state", state_name_},
      {"started", started_},
      {"updated", unix_now()},
      {"job_id", experiment_.job_id.empty() ? Json(nullptr) : Json(experiment_.job_id)},
      {"metric", experiment_.metric.empty() ? Json(nullptr) : Json(experiment_.metric)},
      {"mode", experiment_.mode == kMin ? "min" : "max"},
      {"searcher", experiment_.searcher},
      {"scheduler", experiment_.scheduler},
      {"counts", std::move(counts)},
      {"best", best == nullptr ? Json(nullptr)
                               : Json{{"trial_id", best->trial_id}, {"value", best_value}, {"config", best->config}}},
      {"trials", std::move(trials)},
      {"error", error_.empty() ? Json(nullptr) : Json(error_)}};
  if (first > 0) record["trials_omitted"] = first;
  return record;
}

std::string DashboardRecord::text() const {
  Detail detail = full_detail();
  std::string text = dump(build(detail));
  // Too large (huge sweeps, large results): less history, then only the metric of each
  // last result, then only the latest trials.
  if (text.size() > kMaxBytes) {
    detail.history_points /= 4;
    text = dump(build(detail));
  }
  if (text.size() > kMaxBytes) {
    detail = {.history_points = 0, .brief = true};
    text = dump(build(detail));
  }
  if (text.size() > kMaxBytes) {
    double fits = static_cast<double>(kMaxBytes) / static_cast<double>(text.size());
    detail.max_trials = static_cast<size_t>(0.9 * fits * static_cast<double>(state_.records().size()));
    text = dump(build(detail));
  }
  return text;
}

}  // namespace gantry::tune::detail
