#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gantry/tune/search_space.h"
#include "gantry/tune/searcher.h"

namespace gantry::tune {

/// A trial's state in the experiment.
enum class TrialStatus {
  kPending,     ///< created, not started (or waiting to restart)
  kRunning,     ///< its trainable runs
  kPaused,      ///< stopped by the scheduler for now; resumes from its checkpoint
  kTerminated,  ///< finished, or stopped early for good
  kError,       ///< failed, retries used up
};
const char* status_name(TrialStatus status);

/// What a scheduler sees of one trial.
struct TrialView {
  std::string trial_id;
  Json config{};
  TrialStatus status = TrialStatus::kPending;
  /// Its latest result (null before the first).
  Json last_result{};
  /// A checkpoint of it is stored and readable now: a trial another may be cloned from
  /// (PBT never clones one without).
  bool has_checkpoint = false;
  /// The training_iteration of that checkpoint.
  int64_t checkpoint_iteration = 0;
};

/// The trials of the experiment, for schedulers that compare a trial with the others.
class TrialTable {
 public:
  virtual ~TrialTable() = default;
  /// Every trial, in creation order.
  virtual std::vector<const TrialView*> trials() const = 0;
  /// The trial `trial_id`, or null.
  virtual const TrialView* find(const std::string& trial_id) const = 0;
};

/// What a scheduler decides at a result.
struct Decision {
  enum class Action {
    kContinue,  ///< go on
    kStop,      ///< end the trial now, for good (TERMINATED)
    kPause,     ///< end it for now (PAUSED); choose_trial_to_run resumes it later
    kExploit,   ///< PBT: continue from a copy of `clone_from`'s checkpoint with `config`
  };
  Action action = Action::kContinue;
  std::string clone_from{};
  Json config{};
  /// Why, for the experiment's log (a rung and its cutoff, a PBT perturbation).
  std::string reason{};

  static Decision keep_going() { return {}; }
  static Decision stop(std::string why) { return {Action::kStop, {}, {}, std::move(why)}; }
  static Decision pause(std::string why) { return {Action::kPause, {}, {}, std::move(why)}; }
};

/// Decides, at each result, whether a trial goes on: pure logic over results, no
/// cluster. The Tuner calls it from one thread and, on restore, replays every call it
/// logged into a fresh scheduler built from `spec()` (decisions made in replay are
/// ignored): a scheduler must be deterministic given its seed and that sequence, and
/// must not read clocks.
class TrialScheduler {
 public:
  virtual ~TrialScheduler() = default;

  /// Called once, before anything else, with the experiment's metric and mode (used
  /// where the scheduler's own options leave them empty). Throws gantry::Error for
  /// invalid options.
  virtual void setup(const std::string& metric, Mode mode) = 0;
  virtual void on_trial_add(const TrialTable& table, const TrialView& trial) {}
  /// A trial reported `result` (already in `trial.last_result`).
  virtual Decision on_trial_result(const TrialTable& table, const TrialView& trial, const Json& result) = 0;
  /// A trial ended on its own (its trainable returned) with its last result.
  virtual void on_trial_complete(const TrialTable& table, const TrialView& trial, const Json& result) {}
  /// A trial failed for good, or was stopped by someone else than this scheduler.
  virtual void on_trial_remove(const TrialTable& table, const TrialView& trial) {}
  /// The searcher will create no more trials (called once, and again in a replay):
  /// groups waiting to fill up (HyperBand's brackets) go ahead with the trials they have.
  virtual void on_no_more_trials(const TrialTable& table) {}
  /// Of the trials waiting to run (PENDING, or PAUSED by this scheduler), the one to
  /// start or resume next, or nullopt to start none of them now. The default takes the
  /// first pending one, then the first paused one.
  virtual std::optional<std::string> choose_trial_to_run(const TrialTable& table);
  /// Trials this scheduler ended for good outside a decision on their own result (HyperBand
  /// cuts trials that wait PAUSED at a milestone when the last of their bracket arrives).
  /// The Tuner calls it after every other call and ends each trial it names as for a
  /// kStop decision (TERMINATED); each id is returned once. In a replay the Tuner calls
  /// it too and ignores the answer, as it ignores decisions. The default names none.
  virtual std::vector<std::string> take_trials_to_stop() { return {}; }
  virtual std::string name() const = 0;
  /// Options that rebuild an equal fresh scheduler with `make_scheduler`; null for one
  /// of your own (pass it again to Tuner::restore).
  virtual Json spec() const { return nullptr; }
};

/// A built-in scheduler from its `spec()`. Throws gantry::Error for an unknown spec.
std::shared_ptr<TrialScheduler> make_scheduler(const Json& spec);

/// Runs every trial to its end (the default).
std::shared_ptr<TrialScheduler> FIFO();

/// Asynchronous successive halving (Li et al. 2018; Ray's AsyncHyperBandScheduler).
/// Rungs at grace_period * reduction_factor^k up to max_t; a trial reaching a rung stops
/// when its value is below the top 1/reduction_factor of those recorded at that rung.
struct ASHAOptions {
  std::string time_attr = "training_iteration";
  std::string metric{};  ///< empty: the experiment's
  std::optional<Mode> mode{};
  double max_t = 100;
  double grace_period = 1;
  double reduction_factor = 4;
  int brackets = 1;
  /// Stop trials once they reach max_t.
  bool stop_last_trials = true;
  std::optional<uint64_t> seed{};  ///< for assigning trials to brackets
};
std::shared_ptr<TrialScheduler> ASHA(ASHAOptions options = {});

/// Synchronous HyperBand (Li et al. 2017; Ray's HyperBandScheduler): brackets of trials
/// run to a milestone, pause there until the bracket's other trials arrive, and the top
/// 1/reduction_factor continue.
struct HyperBandOptions {
  std::string time_attr = "training_iteration";
  std::string metric{};
  std::optional<Mode> mode{};
  double max_t = 81;
  double reduction_factor = 3;
  bool stop_last_trials = true;
};
std::shared_ptr<TrialScheduler> HyperBand(HyperBandOptions options = {});

/// Median stopping (Golovin et al. 2017; Ray's MedianStoppingRule): stops a trial whose
/// best result so far is worse than the median of the other trials' running averages
/// at the same time.
struct MedianStoppingOptions {
  std::string time_attr = "time_total_s";
  std::string metric{};
  std::optional<Mode> mode{};
  double grace_period = 60;
  int min_samples_required = 3;
  double min_time_slice = 0;
  /// Stop for good; otherwise pause (and resume when nothing else waits).
  bool hard_stop = true;
};
std::shared_ptr<TrialScheduler> MedianStopping(MedianStoppingOptions options = {});

/// Population based training (Jaderberg et al. 2017; Ray's PopulationBasedTraining).
/// Every `perturbation_interval` of `time_attr`, a trial in the bottom `quantile_fraction`
/// continues from a copy of the checkpoint of one in the top fraction (exploit) with
/// that trial's config perturbed (explore): each key of `hyperparam_mutations` is
/// resampled from its domain with `resample_probability`, else a numeric value is
/// multiplied by one of `perturbation_factors` and a choice moves to a neighbouring
/// value. Only trials with a stored checkpoint are cloned.
struct PBTOptions {
  std::string time_attr = "time_total_s";
  std::string metric{};
  std::optional<Mode> mode{};
  double perturbation_interval = 60;
  double burn_in_period = 0;
  /// Key path -> how to mutate it: a domain (resampled from it; a choice also moves to a
  /// neighbouring value), nested spaces for nested keys.
  ParamSpace hyperparam_mutations{};
  double quantile_fraction = 0.25;
  double resample_probability = 0.25;
  std::vector<double> perturbation_factors{1.2, 0.8};
  /// Replaces explore: given the new config, returns it changed.
  std::function<Json(const Json& config)> custom_explore_fn{};
  std::optional<uint64_t> seed{};
};
std::shared_ptr<TrialScheduler> PBT(PBTOptions options = {});

}  // namespace gantry::tune
