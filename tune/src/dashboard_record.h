#pragma once

// A sweep's record for the head's dashboard: the JSON the Tuner's driver writes to the
// cluster's key-value store under `gantry.dashboard/tune/<experiment name>`
// (dashboard/API.md, "What Train and Tune publish").

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gantry/published_record.h"
#include "gantry/tune/searcher.h"

namespace gantry::tune::detail {

class ExperimentState;

/// What a sweep's driver tells the dashboard, and when. Following the experiment's
/// events is plain bookkeeping (each trial's [iteration, metric] history, thinned to
/// `kMaxHistory` pairs, and its best value); the JSON is built from the trial table and
/// written only when a write is due, as gantry::RecordPublisher paces it: periodically
/// while the sweep goes on (`publish_if_due`), and at once when the sweep's state changes
/// (`set_state`). A write that fails (the head unreachable) never fails the sweep. Used
/// from the driver's thread only.
class DashboardRecord {
 public:
  using Clock = RecordPublisher::Clock;
  /// Where a record goes: (key, JSON text). May throw; the record catches it.
  using Sink = RecordPublisher::Sink;

  /// [iteration, metric] pairs kept per trial.
  static constexpr size_t kMaxHistory = 100;
  /// Pairs shown over all trials: a sweep of many trials shows fewer of each.
  static constexpr size_t kHistoryBudget = 20000;
  /// A record larger than this is written with less history and detail.
  static constexpr size_t kMaxBytes = 1u << 20;

  /// The sweep as its tuner.json describes it.
  struct Experiment {
    std::string name;
    std::string path;
    std::string job_id;  ///< the driver's job (hex, or empty)
    std::string metric;  ///< empty: the sweep has none
    Mode mode = kMin;
    std::string searcher;
    std::string scheduler;
  };

  /// Reads the trials from `state`, which it does not own: `state` must outlive it.
  DashboardRecord(Experiment experiment, const ExperimentState& state, Sink sink);

  /// gantry::kv::put into the cluster's namespace.
  static Sink cluster_kv() { return RecordPublisher::cluster_kv(); }
  static std::string key_of(const std::string& experiment) { return RecordPublisher::key_for("tune", experiment); }
  const std::string& key() const { return publisher_.key(); }

  /// Takes in the results the state holds already (a restored sweep's replay).
  void catch_up();
  /// Follows `event`, just applied to the state.
  void on_event(const Json& event);
  /// Where trial `trial_id` runs (the events name only the node's address).
  void set_node_id(const std::string& trial_id, const std::string& node_id);

  /// The sweep's new state (running, finished, failed); `error` says why it failed.
  /// Writes now.
  void set_state(const std::string& state, const std::string& error = "");
  /// Writes when something changed since the last write and a write is due
  /// (RecordPublisher::publish_if_due).
  void publish_if_due(Clock::time_point now = Clock::now());

 private:
  struct TrialSeries {
    ThinnedSeries<std::pair<int64_t, double>> history{kMaxHistory};
    std::optional<double> best;
    std::string node_id;
  };
  /// How much of the record to write: a smaller level when the full one is too large.
  struct Detail {
    size_t history_points = kMaxHistory;  ///< per trial
    bool brief = false;                   ///< a trial's last result: the metric only
    size_t max_trials = SIZE_MAX;         ///< the latest trials only
  };

  void add_result(TrialSeries& series, const Json& result);
  /// Everything, with each trial's share of kHistoryBudget.
  Detail full_detail() const;
  Json build(const Detail& detail) const;
  /// The record's text: at full detail, or with less when that is larger than kMaxBytes.
  std::string text() const;

  Experiment experiment_;
  const ExperimentState& state_;
  double started_;
  std::string state_name_ = "running";
  std::string error_;
  std::map<std::string, TrialSeries> series_;  ///< by trial id

  RecordPublisher publisher_;
};

}  // namespace gantry::tune::detail
