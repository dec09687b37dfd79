#pragma once

// A Train run's record for the head's dashboard: the JSON the driver writes to the
// cluster's key-value store under `gantry.dashboard/train/<run name>` (dashboard/API.md,
// "What Train and Tune publish").

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "gantry/config.h"
#include "gantry/published_record.h"

namespace gantry::train::detail {

/// What a run's driver tells the dashboard, and when: updates are plain bookkeeping;
/// the JSON is built and written only when a write is due, as gantry::RecordPublisher
/// paces it: periodically while the run goes on (`publish_if_due`), and at once on every
/// state change (`set_state`). A write that fails (the head unreachable) never fails the
/// run. Used from the driver's thread only.
class DashboardRecord {
 public:
  using Clock = RecordPublisher::Clock;
  /// Where a record goes: (key, JSON text). May throw; the record catches it.
  using Sink = RecordPublisher::Sink;

  static constexpr size_t kMaxHistory = 500;
  static constexpr size_t kMaxCheckpoints = 100;
  static constexpr size_t kMaxMetricNames = 200;
  /// A record larger than this is written with less history and detail.
  static constexpr size_t kMaxBytes = 1u << 20;

  struct Worker {
    int rank = 0;
    std::string node_id;
    int pid = 0;
    std::vector<int> gpu_ids;
  };
  struct CheckpointSummary {
    std::string path;
    int64_t iteration = 0;  ///< the report it came with, counted from 1
    Json metrics = Json::object();
  };

  /// `name` is the run's name (the key's last part), `run_path` its directory, `job_id`
  /// the driver's job (hex, or empty).
  DashboardRecord(std::string name, std::string run_path, std::string job_id, int num_workers, bool use_gpu, Sink sink);

  /// gantry::kv::put into the cluster's namespace.
  static Sink cluster_kv() { return RecordPublisher::cluster_kv(); }
  static std::string key_of(const std::string& run_name) { return RecordPublisher::key_for("train", run_name); }
  const std::string& key() const { return publisher_.key(); }

  /// The workers of the group that runs now (or ran last).
  void set_workers(std::vector<Worker> workers);
  /// Report number `iteration` (from 1) with rank 0's `metrics`, made at Unix time `time`
  /// (nullopt for reports a restored run read back from its files).
  void add_report(int64_t iteration, const Json& metrics, std::optional<double> time);
  /// The checkpoints kept now, oldest first (the latest `kMaxCheckpoints` are shown).
  void set_checkpoints(std::vector<CheckpointSummary> kept);
  /// A worker group failed.
  void add_failure();

  /// The driver's new state (starting, running, restarting, resizing, finished, failed,
  /// stopped); `error` says why it failed. Writes now.
  void set_state(const std::string& state, const std::string& error = "");
  /// Writes when something changed since the last write and a write is due
  /// (RecordPublisher::publish_if_due).
  void publish_if_due(Clock::time_point now = Clock::now());

 private:
  /// `history_points` caps the history shown (evenly thinned); `brief` leaves out the
  /// metrics of checkpoints and the non-numeric last metrics.
  Json build(size_t history_points, bool brief) const;
  /// The record's text: the full one, or a brief one with less history when that is
  /// larger than kMaxBytes.
  std::string text() const;

  std::string name_;
  std::string run_path_;
  std::string job_id_;
  double started_;
  std::string state_ = "starting";
  std::string error_;
  int num_workers_;
  bool use_gpu_;
  int failures_ = 0;
  std::vector<Worker> workers_;
  int64_t iterations_ = 0;
  Json last_metrics_ = Json::object();
  std::set<std::string> metric_names_;  ///< every top-level name reported, at most kMaxMetricNames
  struct HistoryPoint {
    int64_t iteration = 0;
    std::optional<double> time;
    Json metrics;  ///< the numeric ones only
  };
  ThinnedSeries<HistoryPoint> history_{kMaxHistory};
  std::vector<CheckpointSummary> checkpoints_;

  RecordPublisher publisher_;
};

}  // namespace gantry::train::detail
