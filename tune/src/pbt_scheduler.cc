#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gantry/errors.h"
#include "gantry/tune/scheduler.h"
#include "scheduler_options.h"
#include "scheduler_specs.h"
#include "searcher_specs.h"

namespace gantry::tune {
namespace {

using detail::number;
using detail::number_at;

// Draws in [0, 1) and indices from the top 53 bits, the same on every standard library
// (unlike the std distributions), so a seed means the same perturbations everywhere.
double uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }
size_t pick(Rng& rng, size_t n) {
  return std::min(n - 1, static_cast<size_t>(uniform01(rng) * static_cast<double>(n)));
}

// hyperparam_mutations says how to mutate each key; a constant there says nothing.
void reject_constants(const ParamSpace& space, const std::string& prefix) {
  for (const auto& [key, node] : space.entries()) {
    const std::string path = prefix.empty() ? key : prefix + "/" + key;
    if (node.kind() == ParamSpace::Node::Kind::kConstant) {
      throw Error("PBT: hyperparam_mutations[\"" + path + "\"] is a constant (" + node.constant().dump() +
                  "); give a domain to mutate it with, tune::choice({...}) for a list of values");
    }
    if (node.kind() == ParamSpace::Node::Kind::kSpace) reject_constants(node.space(), path);
  }
}

// A numeric value multiplied by a perturbation factor, kept of the domain's kind: the
// integer forms stay integers, the q-forms multiples of q. Like Ray, continuous values are
// not clamped to the domain's bounds: PBT may leave the initial range where that helps
// (the factors are positive, so a log domain's value stays positive).
Json perturbed(const Domain& domain, const Json& old, double factor) {
  const double x = old.get<double>() * factor;
  const bool quantised = domain.kind == Domain::Kind::kQUniform || domain.kind == Domain::Kind::kQLogUniform ||
                         domain.kind == Domain::Kind::kQRandInt || domain.kind == Domain::Kind::kQRandn;
  if (quantised && domain.q > 0) {
    const double snapped = std::round(x / domain.q) * domain.q;
    if (domain.is_integer() || old.is_number_integer()) return Json(static_cast<int64_t>(std::llround(snapped)));
    return Json(snapped);
  }
  if (domain.is_integer() || old.is_number_integer()) return Json(static_cast<int64_t>(std::llround(x)));
  return Json(x);
}

class PbtScheduler final : public TrialScheduler {
 public:
  explicit PbtScheduler(PBTOptions options)
      : options_(std::move(options)), seed_(detail::seed_or_random(options_.seed)), rng_(seed_) {
    if (options_.time_attr.empty()) throw Error("PBT: time_attr is empty");
    if (!(options_.perturbation_interval > 0)) {
      throw Error("PBT: perturbation_interval must be > 0, got " + number(options_.perturbation_interval));
    }
    if (!(options_.burn_in_period >= 0)) {
      throw Error("PBT: burn_in_period must be >= 0, got " + number(options_.burn_in_period));
    }
    if (!(options_.quantile_fraction > 0 && options_.quantile_fraction <= 0.5)) {
      throw Error("PBT: quantile_fraction must be in (0, 0.5], got " + number(options_.quantile_fraction));
    }
    if (!(options_.resample_probability >= 0 && options_.resample_probability <= 1)) {
      throw Error("PBT: resample_probability must be in [0, 1], got " + number(options_.resample_probability));
    }
    if (options_.perturbation_factors.empty()) throw Error("PBT: perturbation_factors is empty");
    for (double factor : options_.perturbation_factors) {
      if (!(factor > 0) || !std::isfinite(factor)) {
        throw Error("PBT: perturbation_factors must be positive and finite, got " + number(factor));
      }
    }
    if (options_.hyperparam_mutations.empty() && !options_.custom_explore_fn) {
      throw Error("PBT: give hyperparam_mutations or custom_explore_fn, or PBT has nothing to explore with");
    }
    reject_constants(options_.hyperparam_mutations, "");
    options_.hyperparam_mutations.validate();
  }

  void setup(const std::string& metric, Mode mode) override {
    metric_ = options_.metric.empty() ? metric : options_.metric;
    if (metric_.empty()) {
      throw Error("PBT: no metric to compare trials by; set TuneConfig::metric or PBTOptions::metric");
    }
    mode_ = options_.mode.value_or(mode);
  }

  void on_trial_add(const TrialTable& table, const TrialView& trial) override { states_.try_emplace(trial.trial_id); }

  Decision on_trial_result(const TrialTable& table, const TrialView& trial, const Json& result) override {
    const std::optional<double> time = number_at(result, options_.time_attr);
    const std::optional<double> value = number_at(result, metric_);
    if (!time || !value) return Decision::keep_going();
    State& state = states_[trial.trial_id];
    state.last_time = *time;
    state.score = (mode_ == kMax ? 1.0 : -1.0) * *value;
    if (*time < options_.burn_in_period) return Decision::keep_going();
    if (*time - state.last_perturbation_time < options_.perturbation_interval) return Decision::keep_going();
    state.last_perturbation_time = *time;

    const auto [bottom, top] = quantiles(table);
    if (std::find(bottom.begin(), bottom.end(), trial.trial_id) != bottom.end()) {
      // Only a top trial with a stored checkpoint can be cloned (Ray cloned ones without:
      // ray-project/ray#8441, #27170).
      std::vector<const TrialView*> sources;
      for (const std::string& id : top) {
        const TrialView* view = table.find(id);
        if (view != nullptr && view->has_checkpoint && id != trial.trial_id) sources.push_back(view);
      }
      if (!sources.empty()) return exploit(trial, *value, *sources[pick(rng_, sources.size())]);
    }
    // With more trials than slots, the population takes turns (Ray does the same).
    for (const TrialView* view : table.trials()) {
      if (view->trial_id != trial.trial_id &&
          (view->status == TrialStatus::kPending || view->status == TrialStatus::kPaused)) {
        return Decision::pause("PBT: " + options_.time_attr + " " + number(*time) +
                               " reached a perturbation interval; yields to waiting trials");
      }
    }
    return Decision::keep_going();
  }

  // The waiting trial that has trained least goes first, so the population advances
  // together (Ray's order).
  std::optional<std::string> choose_trial_to_run(const TrialTable& table) override {
    const TrialView* chosen = nullptr;
    double chosen_time = 0;
    for (const TrialView* view : table.trials()) {
      if (view->status != TrialStatus::kPending && view->status != TrialStatus::kPaused) continue;
      auto it = states_.find(view->trial_id);
      const double time = it == states_.end() ? 0 : it->second.last_time;
      if (chosen == nullptr || time < chosen_time) {
        chosen = view;
        chosen_time = time;
      }
    }
    if (chosen == nullptr) return std::nullopt;
    return chosen->trial_id;
  }

  std::string name() const override { return "pbt"; }

  Json spec() const override {
    // Neither a function nor a sample_from domain can be written down to rebuild from.
    if (options_.custom_explore_fn || options_.hyperparam_mutations.has_sample_from()) return nullptr;
    return {{"name", "pbt"},
            {"time_attr", options_.time_attr},
            {"metric", options_.metric},
            {"mode", options_.mode ? Json(*options_.mode == kMax ? "max" : "min") : Json(nullptr)},
            {"perturbation_interval", options_.perturbation_interval},
            {"burn_in_period", options_.burn_in_period},
            {"hyperparam_mutations", options_.hyperparam_mutations.to_json()},
            {"quantile_fraction", options_.quantile_fraction},
            {"resample_probability", options_.resample_probability},
            {"perturbation_factors", options_.perturbation_factors},
            {"seed", seed_}};
  }

 private:
  struct State {
    /// Its latest value, larger is better (mode applied); nullopt before its first.
    std::optional<double> score;
    double last_time = 0;
    double last_perturbation_time = 0;
  };

  // The bottom and top quantile_fraction of the trials that have a value and have not
  // ended, worst first; none when fewer than two (Ray's rule, which also caps each at
  // half the trials).
  std::pair<std::vector<std::string>, std::vector<std::string>> quantiles(const TrialTable& table) const {
    std::vector<std::pair<double, std::string>> ranked;
    for (const TrialView* view : table.trials()) {
      if (view->status == TrialStatus::kTerminated || view->status == TrialStatus::kError) continue;
      auto it = states_.find(view->trial_id);
      if (it == states_.end() || !it->second.score || std::isnan(*it->second.score)) continue;
      ranked.emplace_back(*it->second.score, view->trial_id);
    }
    if (ranked.size() <= 1) return {};
    // Equal values keep creation order.
    std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    const double n = static_cast<double>(ranked.size());
    size_t count = static_cast<size_t>(std::ceil(n * options_.quantile_fraction - 1e-9));
    count = std::min(count, ranked.size() / 2);
    std::vector<std::string> bottom;
    std::vector<std::string> top;
    for (size_t i = 0; i < count; ++i) {
      bottom.push_back(ranked[i].second);
      top.push_back(ranked[ranked.size() - count + i].second);
    }
    return {bottom, top};
  }

  Decision exploit(const TrialView& trial, double value, const TrialView& source) {
    std::vector<std::string> changes;
    Json config = explore(source.config, changes);
    const State& source_state = states_[source.trial_id];
    State& state = states_[trial.trial_id];
    // It continues from the source's checkpoint, so it is as far as the source.
    state.last_perturbation_time = source_state.last_perturbation_time;
    state.last_time = source_state.last_time;

    Decision decision;
    decision.action = Decision::Action::kExploit;
    decision.clone_from = source.trial_id;
    decision.config = std::move(config);
    decision.reason =
        "PBT: " + trial.trial_id + " (" + metric_ + " " + number(value) + ") continues from " + source.trial_id +
        "'s checkpoint at iteration " + std::to_string(source.checkpoint_iteration) + " (" + metric_ + " " +
        number((mode_ == kMax ? 1.0 : -1.0) * source_state.score.value_or(std::numeric_limits<double>::quiet_NaN())) +
        ")";
    for (size_t i = 0; i < changes.size(); ++i) decision.reason += (i == 0 ? ": " : ", ") + changes[i];
    return decision;
  }

  // Ray's explore: each key of hyperparam_mutations is resampled with
  // resample_probability (or when absent or not of its domain's kind); otherwise a number
  // is multiplied by one of perturbation_factors and a choice moves to a neighbouring
  // value (staying put at either end). custom_explore_fn then gets the result.
  Json explore(const Json& base, std::vector<std::string>& changes) {
    Json config = base.is_object() ? base : Json::object();
    for (const auto& [path, domain] : options_.hyperparam_mutations.domains()) {
      const Json* current = ParamSpace::lookup(config, path);
      const Json old = current != nullptr ? *current : Json(nullptr);
      const bool resample = uniform01(rng_) < options_.resample_probability || current == nullptr;
      Json value;
      std::string how;
      if (domain->is_categorical()) {
        const std::vector<Json>& values = domain->values;
        auto found = std::find(values.begin(), values.end(), old);
        if (resample || found == values.end()) {
          value = values[pick(rng_, values.size())];
          how = "resampled";
        } else {
          const auto index = static_cast<size_t>(found - values.begin());
          const bool right = pick(rng_, 2) == 1;
          const size_t moved = right ? std::min(index + 1, values.size() - 1) : (index == 0 ? 0 : index - 1);
          value = values[moved];
          how = moved == index ? std::string("at the ") + (right ? "last" : "first") + " value"
                               : std::string("shifted ") + (right ? "right" : "left");
        }
      } else if (resample || !old.is_number()) {
        value = domain->kind == Domain::Kind::kSampleFrom ? domain->fn(config) : domain->sample(rng_);
        how = "resampled";
      } else {
        const double factor = options_.perturbation_factors[pick(rng_, options_.perturbation_factors.size())];
        value = perturbed(*domain, old, factor);
        how = "* " + number(factor);
      }
      changes.push_back(path + " " + old.dump() + " -> " + value.dump() + " (" + how + ")");
      ParamSpace::assign(config, path, std::move(value));
    }
    if (options_.custom_explore_fn) {
      Json before = config;
      config = options_.custom_explore_fn(config);
      if (!config.is_object()) {
        throw Error("PBT: custom_explore_fn returned " + config.dump() + ", not a config object");
      }
      if (config != before) changes.push_back("custom_explore_fn applied");
    }
    return config;
  }

  PBTOptions options_;
  uint64_t seed_;
  Rng rng_;
  std::string metric_;
  Mode mode_ = kMin;
  std::map<std::string, State> states_;
};

}  // namespace

std::shared_ptr<TrialScheduler> PBT(PBTOptions options) { return std::make_shared<PbtScheduler>(std::move(options)); }

namespace detail {
std::shared_ptr<TrialScheduler> pbt_from_spec(const Json& spec) {
  PBTOptions options;
  options.time_attr = spec_value("PBT", spec, "time_attr", options.time_attr);
  options.metric = spec_value("PBT", spec, "metric", options.metric);
  options.mode = mode_from_spec("PBT", spec);
  options.perturbation_interval = spec_value("PBT", spec, "perturbation_interval", options.perturbation_interval);
  options.burn_in_period = spec_value("PBT", spec, "burn_in_period", options.burn_in_period);
  if (spec.contains("hyperparam_mutations") && !spec["hyperparam_mutations"].is_null()) {
    options.hyperparam_mutations = ParamSpace::from_json(spec["hyperparam_mutations"]);
  }
  options.quantile_fraction = spec_value("PBT", spec, "quantile_fraction", options.quantile_fraction);
  options.resample_probability = spec_value("PBT", spec, "resample_probability", options.resample_probability);
  options.perturbation_factors = spec_value("PBT", spec, "perturbation_factors", options.perturbation_factors);
  if (spec.contains("seed") && !spec["seed"].is_null()) options.seed = spec_value<uint64_t>("PBT", spec, "seed", 0);
  return PBT(std::move(options));
}
}  // namespace detail

}  // namespace gantry::tune
