// BOHB (Falkner et al. 2018): TPE's proposal fitted on the results at one budget, the
// largest that enough trials have reached, so the model learns from the longest runs it
// can trust while HyperBand stops most trials early.
//
// Budgets are values of `time_attr` in the results. A trial has reached budget b when
// one of its results has time_attr >= b; its value at b is the metric of its result
// with the largest time_attr <= b (the latest such, on ties). The model's budget is the
// largest b that at least min_points_in_model trials have reached, which is the
// min_points_in_model-th largest of the trials' furthest budgets: with results at
// training_iteration 1, 2, 3, ... that is the largest iteration that many trials got to,
// and with real-valued budgets (time_total_s) trials still compare at one budget.
//
// The model splits those values as TPE does (options.tpe: gamma, gamma_cap,
// n_ei_candidates, multivariate, prior_weight). min_points_in_model takes the place of
// n_startup_trials, and there is no constant liar: HyperBand keeps paused trials neither
// running nor complete for long stretches, and taking them as the worst would push the
// model away from the very configs it promoted. Errored trials keep the results they
// reported before failing, which were measured all the same.

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gantry/tune/searcher.h"
#include "parzen_estimator.h"
#include "searcher_specs.h"

namespace gantry::tune {
namespace {

class BOHBSearcher : public Searcher {
 public:
  explicit BOHBSearcher(BOHBOptions options) : options_(std::move(options)) {
    detail::validate_tpe_options(options_.tpe, "BOHB");
    if (options_.time_attr.empty()) throw Error("BOHB: time_attr must name the budget's key in results");
    if (options_.min_points_in_model < 0) {
      throw Error("BOHB: min_points_in_model must be >= 0 (0: number of parameters + 2), not " +
                  std::to_string(options_.min_points_in_model));
    }
    if (!(options_.random_fraction >= 0 && options_.random_fraction <= 1)) {
      throw Error("BOHB: random_fraction must be in [0, 1], not " + std::to_string(options_.random_fraction));
    }
    seed_ = detail::seed_or_random(options_.seed);
    rng_.seed(seed_);
  }

  void setup(const SearchSetup& setup) override {
    if (setup.space == nullptr) throw Error("BOHB: setup needs a search space");
    if (setup.metric.empty()) throw Error("BOHB needs a metric to model: set TuneConfig::metric (and mode)");
    params_ = detail::parzen_params(*setup.space);
    grid_ = detail::GridCycle(*setup.space);
    min_points_ =
        options_.min_points_in_model > 0 ? static_cast<std::size_t>(options_.min_points_in_model) : params_.size() + 2;
    setup_ = setup;
    ready_ = true;
  }

  Suggestion suggest(const std::string& trial_id) override {
    if (!ready_) throw Error("BOHB: suggest called before setup");
    if (suggested_ >= setup_.num_samples * grid_.size()) return Suggestion::finished();
    const int k = suggested_++;

    Json config;
    std::optional<double> budget = model_budget();
    // The coin is tossed only once a model exists, so the random phase draws the same
    // configs whatever random_fraction is.
    if (params_.empty() || !budget || uniform_coin() < options_.random_fraction) {
      config = setup_.space->resolve(grid_.assigned(k), rng_);
    } else {
      config = setup_.space->resolve(grid_.assigned(k, detail::decode_point(params_, model_proposal(*budget))), rng_);
    }
    trial(trial_id).point = detail::encode_config(params_, config);
    return Suggestion::of(std::move(config));
  }

  void on_trial_result(const std::string& trial_id, const Json& result) override {
    if (!ready_ || !result.is_object()) return;
    const Json* budget = ParamSpace::lookup(result, options_.time_attr);
    const Json* metric = ParamSpace::lookup(result, setup_.metric);  // "eval/loss" too
    if (budget == nullptr || metric == nullptr || !budget->is_number() || !metric->is_number()) return;
    double b = budget->get<double>();
    double value = metric->get<double>();
    if (!std::isfinite(b) || !std::isfinite(value)) return;
    trial(trial_id).results.emplace_back(b, setup_.mode == kMin ? value : -value);
  }

  void on_trial_complete(const std::string& trial_id, const Json& config, const Json& result, bool error) override {
    if (!ready_) return;
    if (config.is_object()) trial(trial_id).point = detail::encode_config(params_, config);
    if (!error) on_trial_result(trial_id, result);
  }

  std::string name() const override { return "bohb"; }

  Json spec() const override {
    TPEOptions tpe = options_.tpe;
    tpe.seed.reset();  // BOHB draws from its own seed
    return {{"name", "bohb"},
            {"time_attr", options_.time_attr},
            {"min_points_in_model", options_.min_points_in_model},
            {"random_fraction", options_.random_fraction},
            {"tpe", detail::tpe_options_to_json(tpe)},
            {"seed", seed_}};
  }

 private:
  struct TrialRecord {
    detail::ParzenPoint point;  ///< empty until its config is known
    /// (budget, loss) in arrival order; the loss is the metric negated under kMax.
    std::vector<std::pair<double, double>> results;
  };

  TrialRecord& trial(const std::string& trial_id) {
    auto [it, inserted] = index_.try_emplace(trial_id, trials_.size());
    if (inserted) trials_.emplace_back();
    return trials_[it->second];
  }

  double uniform_coin() { return detail::uniform01(rng_); }

  static double furthest(const TrialRecord& t) {
    double best = -INFINITY;
    for (const auto& r : t.results) best = std::max(best, r.first);
    return best;
  }

  std::optional<double> model_budget() const {
    std::vector<double> reached;
    for (const TrialRecord& t : trials_) {
      if (!t.point.empty() && !t.results.empty()) reached.push_back(furthest(t));
    }
    if (reached.size() < min_points_ || min_points_ == 0) return std::nullopt;
    std::nth_element(reached.begin(), reached.begin() + (min_points_ - 1), reached.end(), std::greater<>());
    return reached[min_points_ - 1];
  }

  detail::ParzenPoint model_proposal(double budget) {
    struct Observation {
      const detail::ParzenPoint* point;
      double loss;
    };
    std::vector<Observation> observations;
    for (const TrialRecord& t : trials_) {
      if (t.point.empty() || t.results.empty() || furthest(t) < budget) continue;
      const std::pair<double, double>* at = nullptr;
      for (const auto& r : t.results) {
        if (r.first <= budget && (at == nullptr || r.first >= at->first)) at = &r;
      }
      // Reached the budget but reported nothing at or below it: no value there.
      if (at != nullptr) observations.push_back({&t.point, at->second});
    }
    std::stable_sort(observations.begin(), observations.end(),
                     [](const Observation& a, const Observation& b) { return a.loss < b.loss; });
    std::size_t n_good = detail::good_count(observations.size(), options_.tpe.gamma, options_.tpe.gamma_cap);
    std::vector<const detail::ParzenPoint*> good, bad;
    for (std::size_t i = 0; i < observations.size(); ++i) (i < n_good ? good : bad).push_back(observations[i].point);
    return detail::propose(params_, good, bad, options_.tpe, rng_);
  }

  BOHBOptions options_;
  uint64_t seed_ = 0;
  Rng rng_;
  SearchSetup setup_{};
  bool ready_ = false;
  std::vector<detail::ParzenParam> params_;
  std::size_t min_points_ = 0;
  int suggested_ = 0;
  detail::GridCycle grid_;
  /// Every trial heard of, in first-heard order (the order the model sees them in).
  std::vector<TrialRecord> trials_;
  std::map<std::string, std::size_t> index_;
};

}  // namespace

std::shared_ptr<Searcher> BOHB(BOHBOptions options) { return std::make_shared<BOHBSearcher>(std::move(options)); }

namespace detail {

std::shared_ptr<Searcher> bohb_from_spec(const Json& spec) {
  if (!spec.is_object()) throw Error("tune: a BOHB spec must be a JSON object, not " + spec.dump());
  BOHBOptions options;
  try {
    options.time_attr = spec.value("time_attr", options.time_attr);
    options.min_points_in_model = spec.value("min_points_in_model", options.min_points_in_model);
    options.random_fraction = spec.value("random_fraction", options.random_fraction);
    if (spec.contains("seed") && !spec["seed"].is_null()) options.seed = spec["seed"].get<uint64_t>();
  } catch (const Json::exception& e) {
    throw Error("tune: bad BOHB spec " + spec.dump() + ": " + e.what());
  }
  if (spec.contains("tpe")) options.tpe = tpe_options_from_json(spec["tpe"]);
  return BOHB(std::move(options));
}

}  // namespace detail
}  // namespace gantry::tune
