// TPE (Bergstra et al. 2011): random trials first, then each config is the candidate
// with the best ratio of the good and the bad observations' densities.
//
// An observation is a completed trial whose last result holds a finite metric, at the
// config it ran; failed trials and results without the metric teach nothing. Suggestions
// stay random until n_startup_trials observations exist (at least one), counted at
// completion rather than at suggestion so that a burst of parallel suggestions does not
// start the model on no data. With the constant liar, trials suggested and not yet
// complete join the bad group (as if they ended with the worst value seen) but do not
// count towards the size of the good one.

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "gantry/tune/searcher.h"
#include "parzen_estimator.h"
#include "searcher_specs.h"

namespace gantry::tune {
namespace {

class TPESearcher : public Searcher {
 public:
  explicit TPESearcher(TPEOptions options) : options_(std::move(options)) {
    detail::validate_tpe_options(options_, "TPE");
    seed_ = detail::seed_or_random(options_.seed);
    rng_.seed(seed_);
  }

  void setup(const SearchSetup& setup) override {
    if (setup.space == nullptr) throw Error("TPE: setup needs a search space");
    if (setup.metric.empty()) {
      throw Error("TPE needs a metric to model: set TuneConfig::metric (and mode)");
    }
    params_ = detail::parzen_params(*setup.space);
    grid_ = detail::GridCycle(*setup.space);
    setup_ = setup;
    ready_ = true;
  }

  Suggestion suggest(const std::string& trial_id) override {
    if (!ready_) throw Error("TPE: suggest called before setup");
    if (suggested_ >= setup_.num_samples * grid_.size()) return Suggestion::finished();
    const int k = suggested_++;

    Json config;
    if (params_.empty() || observations_.size() < static_cast<std::size_t>(std::max(1, options_.n_startup_trials))) {
      config = setup_.space->resolve(grid_.assigned(k), rng_);
    } else {
      config = setup_.space->resolve(grid_.assigned(k, detail::decode_point(params_, model_proposal())), rng_);
    }
    running_.emplace_back(trial_id, detail::encode_config(params_, config));
    return Suggestion::of(std::move(config));
  }

  void on_trial_complete(const std::string& trial_id, const Json& config, const Json& result, bool error) override {
    auto running = std::find_if(running_.begin(), running_.end(), [&](const auto& r) { return r.first == trial_id; });
    detail::ParzenPoint suggested;
    if (running != running_.end()) {
      suggested = std::move(running->second);
      running_.erase(running);
    }
    if (error || !ready_ || !result.is_object()) return;
    const Json* metric = ParamSpace::lookup(result, setup_.metric);  // "eval/loss" too
    if (metric == nullptr || !metric->is_number()) return;
    double value = metric->get<double>();
    if (!std::isfinite(value)) return;
    // What the trial ran (a points_to_evaluate config, a PBT trial's last one) is what
    // the result belongs to; the suggestion stands in only when no config came.
    detail::ParzenPoint point = config.is_object() ? detail::encode_config(params_, config) : std::move(suggested);
    if (point.empty()) return;
    observations_.push_back({std::move(point), setup_.mode == kMin ? value : -value});
  }

  std::string name() const override { return "tpe"; }

  Json spec() const override {
    TPEOptions used = options_;
    used.seed = seed_;
    Json j = detail::tpe_options_to_json(used);
    j["name"] = "tpe";
    return j;
  }

 private:
  struct Observation {
    detail::ParzenPoint point;
    double loss;  ///< the metric, negated under kMax: lower is better
  };

  detail::ParzenPoint model_proposal() {
    // Stable: equal losses keep their arrival order, so a replay splits them the same way.
    std::vector<const Observation*> sorted;
    for (const Observation& o : observations_) sorted.push_back(&o);
    std::stable_sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) { return a->loss < b->loss; });

    std::size_t n_good = detail::good_count(sorted.size(), options_.gamma, options_.gamma_cap);
    std::vector<const detail::ParzenPoint*> good, bad;
    for (std::size_t i = 0; i < sorted.size(); ++i) (i < n_good ? good : bad).push_back(&sorted[i]->point);
    // The constant liar: a running trial is taken to end with the worst value seen, so
    // the next suggestions move away from it rather than repeat it.
    if (options_.constant_liar) {
      for (const auto& r : running_) bad.push_back(&r.second);
    }
    return detail::propose(params_, good, bad, options_, rng_);
  }

  TPEOptions options_;
  uint64_t seed_ = 0;
  Rng rng_;
  SearchSetup setup_{};
  bool ready_ = false;
  std::vector<detail::ParzenParam> params_;
  int suggested_ = 0;
  detail::GridCycle grid_;
  /// Completed trials with a finite metric, in completion order.
  std::vector<Observation> observations_;
  /// Suggested trials not yet complete, in suggestion order, with their points.
  std::vector<std::pair<std::string, detail::ParzenPoint>> running_;
};

}  // namespace

std::shared_ptr<Searcher> TPE(TPEOptions options) { return std::make_shared<TPESearcher>(std::move(options)); }

namespace detail {

std::shared_ptr<Searcher> tpe_from_spec(const Json& spec) { return TPE(tpe_options_from_json(spec)); }

}  // namespace detail
}  // namespace gantry::tune
