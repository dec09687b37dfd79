#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gantry/tune/search_space.h"

namespace gantry::tune {

/// Whether a lower or a higher metric is better.
enum Mode { kMin, kMax };

/// What a searcher is set up with, once, before its first suggestion.
struct SearchSetup {
  std::string metric;
  Mode mode = kMin;
  const ParamSpace* space = nullptr;  ///< not owned; outlives the searcher's use
  /// Trials the sweep asks for (TuneConfig::num_samples); grid searchers multiply it by
  /// the grid's size.
  int num_samples = 1;
};

/// A searcher's answer to "what should the next trial try?".
struct Suggestion {
  enum class Status {
    kConfig,    ///< try `config`
    kWait,      ///< nothing now (a limiter is full, a model waits for results); ask again later
    kFinished,  ///< no more trials from this searcher
  };
  Status status = Status::kFinished;
  Json config{};

  static Suggestion of(Json config) { return {Status::kConfig, std::move(config)}; }
  static Suggestion wait() { return {Status::kWait, {}}; }
  static Suggestion finished() { return {Status::kFinished, {}}; }
};

/// Proposes trial configs and learns from their results: pure logic, no cluster, so it
/// is unit-tested with hand-made results. The Tuner calls it from one thread.
///
/// The Tuner logs every call it makes (with the trial ids and results) and, on restore,
/// replays them in the same order into a fresh searcher built from `spec()`: a searcher
/// must be deterministic given its seed and that sequence.
class Searcher {
 public:
  virtual ~Searcher() = default;

  /// Called once before anything else. Throws gantry::Error when the space does not
  /// suit this searcher (a grid for a model-based searcher, say).
  virtual void setup(const SearchSetup& setup) = 0;
  /// The config of the next trial, `trial_id`.
  virtual Suggestion suggest(const std::string& trial_id) = 0;
  /// An intermediate result of a trial this searcher suggested.
  virtual void on_trial_result(const std::string& trial_id, const Json& result) {}
  /// A trial ended: finished, stopped early by a scheduler or failed (`error`). `config`
  /// is what it ran (a PBT trial's last config, or a points_to_evaluate config the
  /// searcher never suggested); `result` is its last result (null when it reported none).
  virtual void on_trial_complete(const std::string& trial_id, const Json& config, const Json& result,
                                 bool error) {}
  /// A short name for logs and the experiment's files ("random", "tpe", ...).
  virtual std::string name() const = 0;
  /// The options (with the seed drawn, if none was given) that rebuild an equal fresh
  /// searcher with `make_searcher`; null for a searcher of your own, which must then be
  /// passed again to Tuner::restore.
  virtual Json spec() const { return nullptr; }
};

/// A built-in searcher from its `spec()`. Throws gantry::Error for an unknown spec.
std::shared_ptr<Searcher> make_searcher(const Json& spec);

/// The default searcher (Ray's BasicVariantGenerator): every grid combination
/// `num_samples` times, the other domains drawn at random for each.
struct BasicVariantOptions {
  std::optional<uint64_t> seed{};
  /// Draw random values for the same trial index the same way whatever the grid.
  bool constant_grid_search = false;
};
std::shared_ptr<Searcher> BasicVariant(BasicVariantOptions options = {});
/// BasicVariant with a seed: random draws (and every grid combination, if any).
std::shared_ptr<Searcher> RandomSearch(std::optional<uint64_t> seed = std::nullopt);

/// Tree-structured Parzen Estimator (Bergstra et al. 2011; Optuna's options): after
/// `n_startup_trials` random trials, it models the best `gamma` of results and the rest
/// as two densities and proposes the candidate with the best ratio. Grid domains are not
/// modelled: every combination is tried `num_samples` times, as BasicVariant does.
struct TPEOptions {
  int n_startup_trials = 10;
  int n_ei_candidates = 24;
  /// Fraction of observations counted as good, capped at `gamma_cap` (Optuna: 0.1, 25).
  double gamma = 0.1;
  int gamma_cap = 25;
  /// One joint density over all parameters instead of one per parameter.
  bool multivariate = false;
  /// Running trials count as observations with the worst value seen, so parallel
  /// suggestions spread out instead of repeating one another.
  bool constant_liar = true;
  /// Weight of the prior (the whole domain) in each density.
  double prior_weight = 1.0;
  std::optional<uint64_t> seed{};
};
std::shared_ptr<Searcher> TPE(TPEOptions options = {});

/// BOHB (Falkner et al. 2018): TPE whose model is fitted on the results at the largest
/// budget (`time_attr` value) with enough observations. Pair it with tune::HyperBand.
struct BOHBOptions {
  std::string time_attr = "training_iteration";
  /// Observations a budget needs before its model is used (0: number of parameters + 2).
  int min_points_in_model = 0;
  /// Fraction of suggestions drawn at random whatever the model says.
  double random_fraction = 1.0 / 3;
  /// The model's options; min_points_in_model stands in for n_startup_trials, BOHB's
  /// seed for this seed, and there is no constant liar.
  TPEOptions tpe{};
  std::optional<uint64_t> seed{};
};
std::shared_ptr<Searcher> BOHB(BOHBOptions options = {});

/// Wraps a searcher so that at most `max_concurrent` of its trials run at once (Ray's
/// ConcurrencyLimiter). With `batch`, it waits until a whole batch has ended before
/// suggesting the next batch.
std::shared_ptr<Searcher> ConcurrencyLimiter(std::shared_ptr<Searcher> searcher, int max_concurrent,
                                             bool batch = false);

}  // namespace gantry::tune
