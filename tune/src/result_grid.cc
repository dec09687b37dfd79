#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "gantry/errors.h"
#include "gantry/tune/tuner.h"
#include "experiment_log.h"
#include "trial_files.h"

namespace gantry::tune {
namespace {

std::optional<double> metric_value(const Json& result, const std::string& metric) {
  const Json* leaf = detail::find_flattened(result, metric);
  if (!leaf || !leaf->is_number()) return std::nullopt;
  double value = leaf->get<double>();
  if (std::isnan(value)) return std::nullopt;
  return value;
}

bool better(double a, double b, Mode mode) { return mode == kMin ? a < b : a > b; }

// The trial's value of `metric` under `scope`: its last result's, or its best one's.
std::optional<double> scoped_value(const Result& result, const std::string& metric, Mode mode,
                                   const std::string& scope) {
  if (scope == "last") return metric_value(result.metrics, metric);
  std::optional<double> best;
  auto consider = [&](const Json& reported) {
    auto value = metric_value(reported, metric);
    if (value && (!best || better(*value, *best, mode))) best = value;
  };
  for (const auto& reported : result.metrics_history) consider(reported);
  // A result given without its history (built by hand) still counts its last one.
  consider(result.metrics);
  return best;
}

}  // namespace

ResultGrid::ResultGrid(std::vector<Result> results, std::string metric, Mode mode, std::string path)
    : results_(std::move(results)), metric_(std::move(metric)), mode_(mode), path_(std::move(path)) {}

const Result& ResultGrid::best_result(const std::string& metric, std::optional<Mode> mode,
                                      const std::string& scope) const {
  const std::string& name = metric.empty() ? metric_ : metric;
  if (name.empty()) {
    throw Error(
        "ResultGrid::best_result: no metric given and the sweep has none (set TuneConfig::metric or "
        "pass one)");
  }
  if (scope != "last" && scope != "all") {
    throw Error("ResultGrid::best_result: scope must be \"last\" or \"all\", not \"" + scope + "\"");
  }
  Mode order = mode.value_or(mode_);
  const Result* best = nullptr;
  double best_value = 0;
  for (const auto& result : results_) {
    auto value = scoped_value(result, name, order, scope);
    if (!value) continue;
    if (!best || better(*value, best_value, order)) {
      best = &result;
      best_value = *value;
    }
  }
  if (!best) {
    throw Error("ResultGrid::best_result: no trial reported metric '" + name + "' (of " +
                std::to_string(results_.size()) + " trials)");
  }
  return *best;
}

std::vector<const Result*> ResultGrid::errors() const {
  std::vector<const Result*> failed;
  for (const auto& result : results_) {
    if (result.status == TrialStatus::kError) failed.push_back(&result);
  }
  return failed;
}

size_t ResultGrid::num_errors() const { return errors().size(); }

size_t ResultGrid::num_terminated() const {
  size_t n = 0;
  for (const auto& result : results_) n += result.status == TrialStatus::kTerminated;
  return n;
}

std::string ResultGrid::to_csv() const {
  // Each trial's row by column; the header is every column in the order first seen, with
  // the error last.
  std::vector<std::unordered_map<std::string, std::string>> rows;
  std::vector<std::string> columns = {"trial_id", "status", "path"};
  std::set<std::string> known(columns.begin(), columns.end());
  known.insert("error");
  for (const auto& result : results_) {
    std::unordered_map<std::string, std::string> row = {{"trial_id", result.trial_id},
                                                        {"status", status_name(result.status)},
                                                        {"path", result.path},
                                                        {"error", result.error.value_or("")}};
    auto add = [&](const std::string& key, const Json& value) {
      // A metric named like a config column (results that echo their config) or a fixed
      // column keeps the first value.
      if (!row.emplace(key, detail::csv_value(value)).second) return;
      if (known.insert(key).second) columns.push_back(key);
    };
    for (const auto& [key, value] : detail::flatten_metrics(result.config)) add("config/" + key, value);
    for (const auto& [key, value] : detail::flatten_metrics(result.metrics)) add(key, value);
    rows.push_back(std::move(row));
  }
  columns.push_back("error");

  std::string csv;
  for (size_t i = 0; i < columns.size(); ++i) csv += (i > 0 ? "," : "") + detail::csv_field(columns[i]);
  csv += '\n';
  for (const auto& row : rows) {
    for (size_t i = 0; i < columns.size(); ++i) {
      if (i > 0) csv += ',';
      if (auto it = row.find(columns[i]); it != row.end()) csv += detail::csv_field(it->second);
    }
    csv += '\n';
  }
  return csv;
}

void ResultGrid::to_csv(const std::string& file) const {
  try {
    detail::write_file_atomically(file, to_csv());
  } catch (const Error& e) {
    throw Error(std::string("ResultGrid::to_csv: ") + e.what());
  }
}

}  // namespace gantry::tune
