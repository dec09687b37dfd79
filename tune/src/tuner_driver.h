#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "experiment_log.h"
#include "gantry/gantry.h"
#include "gantry/tune/tuner.h"
#include "trial_runner.h"

namespace gantry::tune::detail {

class DashboardRecord;
class ProgressReporter;
struct ProgressSnapshot;
class TrialFiles;

/// What a trial runs: a registered trainable, with what it needs beyond the config
/// (a Train run's trainer) and what one trial holds of the cluster when that is not the
/// trial actor's own resources.
struct TrialSpec {
  std::string trainable;
  Json spec{};
  /// {"CPU": 2, ...} held by one trial; empty: TuneConfig::resources_per_trial.
  std::map<std::string, double> footprint{};
  /// Whether one trial's footprint must fit on one node (a trial actor) or may spread
  /// over several (a Train run's worker group).
  bool one_node = true;

  static TrialSpec of(Trainable fn);
};

/// The driver of a sweep: a loop that keeps the free slots filled with trials (new ones
/// from the searcher, waiting ones the scheduler picks), collects their reports, asks
/// the scheduler what each trial does next, and records every change as an event in the
/// experiment's log before acting on it. The trial table, the searcher and the scheduler
/// are rebuilt from that log on restore. It publishes the sweep's record for the
/// dashboard (dashboard_record.h). Used from the thread that calls fit().
class TunerDriver {
 public:
  TunerDriver(TrialSpec trial, ParamSpace space, TuneConfig tune, RunConfig run);
  ~TunerDriver();
  static std::unique_ptr<TunerDriver> restore(const std::string& path, TrialSpec trial, RestoreOptions options);

  ResultGrid fit();

 private:
  /// fit() once the experiment's files are ready: the loop, to the sweep's end.
  ResultGrid run_trials();
  struct Runner {
    ActorHandle<TrialRunner> actor;
    ObjectRef<RunnerInfo> info_ref;
    std::optional<RunnerInfo> info;
    bool dead = false;
  };
  /// A trial whose trainable runs now.
  struct Live {
    std::string id;
    int64_t run = 0;
    std::shared_ptr<Runner> runner;
    ObjectRef<std::string> run_ref;
    ObjectRef<TrialEvent> next_ref;
    int64_t since_restore = 0;
  };

  void validate() const;
  void setup_policies();
  Json describe_experiment() const;
  void prepare_experiment();
  void settle_after_restore();
  void check_feasible() const;
  int concurrency_limit() const;

  /// Logs `event` (stamped with the time), then applies it.
  Decision record(Json event);
  void replay(const Json& event);
  /// The state change of `event` and the searcher and scheduler calls it implies; the
  /// scheduler's decision on a result (ignored when replaying).
  Decision apply(const Json& event, bool replaying);

  /// Ends the trials the scheduler cut (take_trials_to_stop): waiting ones now, running
  /// ones at their next report.
  void end_cut_trials();
  bool has_waiting_trial() const;
  void create_trial();
  void start_trial(const std::string& id);
  void poll(std::chrono::milliseconds timeout);
  void handle_report(Live& live, TrialEvent& event);
  void handle_end(Live& live);
  void store_checkpoint(TrialRecord& t, const CheckpointData& data, const Json& result);
  void prune_checkpoints(TrialRecord& t);
  /// Copies `from_id`'s latest stored checkpoint into `into`'s directory; its name, or
  /// nullopt when there is none on disk.
  std::optional<std::string> clone_checkpoint(TrialRecord& into, const std::string& from_id);
  std::shared_ptr<Runner> acquire_runner();
  void release_runner(std::shared_ptr<Runner> runner);
  TrialFiles& trial_files(const TrialRecord& t);
  bool budget_spent() const;
  std::vector<Result> results() const;
  ProgressSnapshot snapshot() const;
  void say(int level, const std::string& line);

  TrialSpec trial_;
  ParamSpace space_;
  TuneConfig tune_;
  RunConfig run_;
  RestoreOptions restore_;
  bool restoring_ = false;
  bool fitted_ = false;

  std::string name_;
  std::filesystem::path path_;
  std::string experiment_id_;
  std::unique_ptr<ExperimentLog> log_;
  ExperimentState state_;
  std::map<std::string, double> footprint_;
  int searcher_samples_ = 0;
  int searcher_trials_max_ = 0;  ///< searcher_samples_ times the grid's combinations
  int max_trials_ = 0;
  int searcher_trials_ = 0;
  int points_used_ = 0;

  std::vector<std::string> cut_;  ///< trials the scheduler cut, not ended yet
  std::vector<Live> live_;
  std::vector<std::shared_ptr<Runner>> idle_runners_;
  std::map<std::string, std::unique_ptr<TrialFiles>> files_;
  std::unique_ptr<ProgressReporter> reporter_;
  std::unique_ptr<DashboardRecord> dashboard_;  ///< from fit(), once the experiment has its name
  std::chrono::steady_clock::time_point started_;
  int64_t runs_ = 0;
};

}  // namespace gantry::tune::detail
