#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gantry/tune/checkpoint.h"
#include "gantry/tune/scheduler.h"
#include "gantry/tune/search_space.h"
#include "gantry/tune/searcher.h"
#include "gantry/tune/trial_context.h"

namespace gantry::train {
class TorchTrainer;
}

namespace gantry::tune {

/// What each trial's actor holds while it runs.
struct Resources {
  double num_cpus = 1;
  /// Fractions share a device: 0.25 puts four trials on each GPU.
  double num_gpus = 0;
  double memory = 0;
  std::map<std::string, double> resources{};
};

/// What the sweep searches for and how.
struct TuneConfig {
  /// The metric to optimise, a key of the reported results. Needed by `best_result`
  /// without arguments, by model-based searchers and by schedulers.
  std::string metric{};
  Mode mode = kMin;
  /// Trials to run (with a grid: times the grid's size).
  int num_samples = 1;
  /// Trials running at once; 0: as many as the cluster's resources hold.
  int max_concurrent_trials = 0;
  /// Null: tune::BasicVariant() (random draws, every grid combination).
  std::shared_ptr<Searcher> search_alg{};
  /// Null: tune::FIFO().
  std::shared_ptr<TrialScheduler> scheduler{};
  Resources resources_per_trial{};
  /// Configs tried first, in order (nested objects or "a/b" paths); keys they leave out
  /// are drawn from the space. Searchers learn from their results too.
  std::vector<Json> points_to_evaluate{};
  /// Keep trial actors alive between trials of the same resources instead of starting a
  /// process per trial.
  bool reuse_actors = true;
  /// Stop starting trials after this long; running ones end at their next report.
  std::optional<std::chrono::seconds> time_budget{};
};

/// How trials fail and retry.
struct FailureConfig {
  /// Times one trial is retried (from its latest checkpoint) after it throws or its
  /// process dies; -1: forever.
  int max_failures = 0;
};

/// Which checkpoints each trial keeps.
struct CheckpointConfig {
  /// Keep this many (the best by `score_attribute`, or the latest), plus always the
  /// latest; 0 keeps all.
  int num_to_keep = 0;
  std::string score_attribute{};
  Mode score_order = kMax;
};

/// Name, storage and output of the sweep.
struct RunConfig {
  /// The experiment's directory under `storage_path`; empty picks "tune_<date>_<time>".
  std::string name{};
  /// Where experiments go, on the driver's machine ("~" expands).
  std::string storage_path = "~/gantry_results";
  FailureConfig failure{};
  CheckpointConfig checkpoint{};
  /// Ends a trial once a result reaches any of these values ({"training_iteration": 10}):
  /// metric >= value (<= for metrics the sweep minimises).
  std::map<std::string, double> stop{};
  /// 0: silent; 1: the live table (the default); 2: also a line per trial start and
  /// end; 3: also every result.
  int verbose = 1;
  /// Per-trial params.json, result.json, progress.csv and TensorBoard events; switch off
  /// for huge sweeps (the experiment's own state is kept either way).
  bool trial_files = true;
  /// How often the live table is redrawn.
  std::chrono::milliseconds progress_interval = std::chrono::seconds(1);
};

/// One trial's outcome.
struct Result {
  std::string trial_id;
  Json config{};
  /// The last result it reported (null when none).
  Json metrics{};
  std::vector<Json> metrics_history{};
  /// Its latest stored checkpoint.
  std::optional<Checkpoint> checkpoint{};
  /// Its directory in the experiment.
  std::string path;
  TrialStatus status = TrialStatus::kPending;
  /// Why it failed: the exception's type and message, the node it ran on.
  std::optional<std::string> error{};
};

/// The trials of a sweep, in creation order.
class ResultGrid {
 public:
  ResultGrid() = default;
  ResultGrid(std::vector<Result> results, std::string metric, Mode mode, std::string path);

  /// The trial with the best `metric` (in its last result, or its best with `scope` "all"),
  /// by default the sweep's. Throws gantry::Error when no trial reported that metric.
  const Result& best_result(const std::string& metric = "", std::optional<Mode> mode = std::nullopt,
                            const std::string& scope = "last") const;
  size_t size() const { return results_.size(); }
  const Result& operator[](size_t i) const { return results_.at(i); }
  std::vector<Result>::const_iterator begin() const { return results_.begin(); }
  std::vector<Result>::const_iterator end() const { return results_.end(); }
  /// The trials that failed, with their errors.
  std::vector<const Result*> errors() const;
  size_t num_errors() const;
  size_t num_terminated() const;
  /// One row per trial: id, status, config values, last metrics (flattened "a/b").
  std::string to_csv() const;
  void to_csv(const std::string& file) const;
  const std::string& experiment_path() const { return path_; }

 private:
  std::vector<Result> results_;
  std::string metric_;
  Mode mode_ = kMin;
  std::string path_;
};

/// How Tuner::restore continues a sweep.
struct RestoreOptions {
  /// Trials that were running resume from their latest checkpoint (else they are ended).
  bool resume_unfinished = true;
  /// Failed trials resume from their latest checkpoint.
  bool resume_errored = false;
  /// Failed trials start over from scratch.
  bool restart_errored = false;
  /// The space again: needed when it holds sample_from functions; otherwise the stored
  /// one is used.
  std::optional<ParamSpace> param_space{};
  /// Searcher and scheduler of your own (built-in ones are rebuilt from the experiment).
  std::shared_ptr<Searcher> search_alg{};
  std::shared_ptr<TrialScheduler> scheduler{};
};

namespace detail {
class TunerDriver;
}

/// Runs a sweep: trials drawn from a space by a searcher, run as actors with their own
/// resources, stopped or mutated by a scheduler, stored under
/// `run.storage_path/run.name`.
///
///     tune::Tuner tuner(objective, {{"lr", tune::loguniform(1e-4, 1e-1)}},
///                       {.metric = "loss", .mode = tune::kMin, .num_samples = 20});
///     auto best = tuner.fit().best_result();
class Tuner {
 public:
  /// Trials run `trainable` (registered with GANTRY_TRAINABLE). Throws gantry::Error for
  /// an invalid space or options, before any trial starts.
  Tuner(Trainable trainable, ParamSpace param_space, TuneConfig tune = {}, RunConfig run = {});
  /// Each trial is a whole Train run of `trainer` (its own worker group), its config
  /// the trainer's merged with the trial's values. Reports of the run's rank 0 are the
  /// trial's results; its checkpoints are the trial's. Link gantry::tune_train for it
  /// (it brings gantry::train and LibTorch; plain sweeps do without them).
  Tuner(const train::TorchTrainer& trainer, ParamSpace param_space, TuneConfig tune = {}, RunConfig run = {});
  ~Tuner();
  Tuner(Tuner&&) noexcept;
  Tuner& operator=(Tuner&&) noexcept;

  /// Continues the sweep stored at `path` whose driver stopped or was killed: finished
  /// trials are kept, running ones resume from their checkpoints, the searcher and
  /// scheduler go on where they were. Throws gantry::Error when `path` holds no sweep.
  static Tuner restore(const std::string& path, Trainable trainable, RestoreOptions options = {});
  static Tuner restore(const std::string& path, const train::TorchTrainer& trainer, RestoreOptions options = {});
  /// Whether `path` holds a sweep that `restore` can continue.
  static bool can_restore(const std::string& path);

  /// Runs the sweep to its end. Trial failures are in the grid (Result::error); bad
  /// options throw gantry::Error before any trial starts.
  ResultGrid fit();

 private:
  explicit Tuner(std::unique_ptr<detail::TunerDriver> driver);
  std::unique_ptr<detail::TunerDriver> driver_;
};

}  // namespace gantry::tune
