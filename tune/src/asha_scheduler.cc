#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <string>
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

// The q-quantile of `values` (NaN ignored), interpolated linearly between order
// statistics as numpy's nanpercentile does, so cutoffs match Ray's; nullopt when empty.
std::optional<double> quantile(std::vector<double> values, double q) {
  std::erase_if(values, [](double v) { return std::isnan(v); });
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const double position = q * static_cast<double>(values.size() - 1);
  const auto below = static_cast<size_t>(std::floor(position));
  const size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (values[above] - values[below]) * (position - static_cast<double>(below));
}

// Draws in [0, 1) from the top 53 bits, the same on every standard library (unlike
// std::uniform_real_distribution), so a seed means the same brackets everywhere.
double uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

class AshaScheduler final : public TrialScheduler {
 public:
  explicit AshaScheduler(ASHAOptions options)
      : options_(std::move(options)), seed_(detail::seed_or_random(options_.seed)), rng_(seed_) {
    if (!(options_.grace_period > 0)) {
      throw Error("ASHA: grace_period must be > 0, got " + number(options_.grace_period));
    }
    if (!(options_.max_t >= options_.grace_period)) {
      throw Error("ASHA: max_t (" + number(options_.max_t) + ") must be >= grace_period (" +
                  number(options_.grace_period) + ")");
    }
    if (!(options_.reduction_factor > 1)) {
      throw Error("ASHA: reduction_factor must be > 1, got " + number(options_.reduction_factor));
    }
    if (options_.brackets < 1) {
      throw Error("ASHA: brackets must be >= 1, got " + std::to_string(options_.brackets));
    }
    if (options_.time_attr.empty()) throw Error("ASHA: time_attr is empty");
    for (int s = 0; s < options_.brackets; ++s) brackets_.push_back(make_bracket(s));
  }

  void setup(const std::string& metric, Mode mode) override {
    metric_ = options_.metric.empty() ? metric : options_.metric;
    if (metric_.empty()) {
      throw Error("ASHA: no metric to compare trials by; set TuneConfig::metric or ASHAOptions::metric");
    }
    mode_ = options_.mode.value_or(mode);
  }

  void on_trial_add(const TrialTable& table, const TrialView& trial) override {
    // Ray's weighting: a bracket is chosen with probability proportional to
    // e^(its rung count - the largest rung count), favouring the brackets that
    // explore most.
    std::vector<double> weights;
    double largest = 0;
    for (const Bracket& bracket : brackets_) largest = std::max(largest, static_cast<double>(bracket.rungs.size()));
    double total = 0;
    for (const Bracket& bracket : brackets_) {
      weights.push_back(std::exp(static_cast<double>(bracket.rungs.size()) - largest));
      total += weights.back();
    }
    double draw = uniform01(rng_) * total;
    size_t chosen = brackets_.size() - 1;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (draw < weights[i]) {
        chosen = i;
        break;
      }
      draw -= weights[i];
    }
    bracket_of_[trial.trial_id] = chosen;
  }

  Decision on_trial_result(const TrialTable& table, const TrialView& trial, const Json& result) override {
    const std::optional<double> time = number_at(result, options_.time_attr);
    const std::optional<double> value = number_at(result, metric_);
    if (!time || !value) return Decision::keep_going();
    if (options_.stop_last_trials && *time >= options_.max_t) {
      return Decision::stop("ASHA: reached max_t (" + options_.time_attr + " " + number(*time) +
                            " >= " + number(options_.max_t) + ")");
    }
    auto it = bracket_of_.find(trial.trial_id);
    if (it == bracket_of_.end()) return Decision::keep_going();
    return on_milestone(it->second, trial.trial_id, *time, *value);
  }

  void on_trial_complete(const TrialTable& table, const TrialView& trial, const Json& result) override {
    // A trial that ended on its own still tells later trials where its rung's cutoff lies.
    const std::optional<double> time = number_at(result, options_.time_attr);
    const std::optional<double> value = number_at(result, metric_);
    auto it = bracket_of_.find(trial.trial_id);
    if (time && value && it != bracket_of_.end()) on_milestone(it->second, trial.trial_id, *time, *value);
    bracket_of_.erase(trial.trial_id);
  }

  void on_trial_remove(const TrialTable& table, const TrialView& trial) override { bracket_of_.erase(trial.trial_id); }

  std::string name() const override { return "asha"; }

  Json spec() const override {
    return {{"name", "asha"},
            {"time_attr", options_.time_attr},
            {"metric", options_.metric},
            {"mode", options_.mode ? Json(*options_.mode == kMax ? "max" : "min") : Json(nullptr)},
            {"max_t", options_.max_t},
            {"grace_period", options_.grace_period},
            {"reduction_factor", options_.reduction_factor},
            {"brackets", options_.brackets},
            {"stop_last_trials", options_.stop_last_trials},
            {"seed", seed_}};
  }

 private:
  struct Rung {
    double milestone = 0;
    /// Trial id -> its value at the milestone, larger is better (mode applied).
    std::map<std::string, double> recorded;
  };
  struct Bracket {
    /// Highest milestone first.
    std::vector<Rung> rungs;
  };

  // Bracket s has rungs at grace_period * rf^(k + s) for k = 0, 1, ... up to max_t.
  Bracket make_bracket(int s) const {
    Bracket bracket;
    const double rf = options_.reduction_factor;
    // The tolerance keeps a milestone that equals max_t up to rounding (81 = 3^4).
    const double limit = options_.max_t * (1 + 1e-9);
    for (int k = 0;; ++k) {
      const double milestone = options_.grace_period * std::pow(rf, k + s);
      if (milestone > limit) break;
      bracket.rungs.insert(bracket.rungs.begin(), Rung{milestone, {}});
    }
    return bracket;
  }

  // Records the trial at the highest milestone it has reached, the first time it reaches
  // it, and stops it when it is below the cutoff of the values recorded there before.
  Decision on_milestone(size_t bracket_index, const std::string& trial_id, double time, double value) {
    Bracket& bracket = brackets_[bracket_index];
    const double sign = mode_ == kMax ? 1.0 : -1.0;
    for (size_t r = 0; r < bracket.rungs.size(); ++r) {
      Rung& rung = bracket.rungs[r];
      if (time < rung.milestone) continue;
      if (rung.recorded.count(trial_id) != 0) return Decision::keep_going();
      std::vector<double> recorded;
      recorded.reserve(rung.recorded.size());
      for (const auto& [id, v] : rung.recorded) recorded.push_back(v);
      const double rf = options_.reduction_factor;
      const std::optional<double> cutoff = quantile(std::move(recorded), 1 - 1 / rf);
      const double score = sign * value;
      const size_t count = rung.recorded.size();
      rung.recorded[trial_id] = score;
      // A NaN (diverged) value is worse than any cutoff.
      if (cutoff && (std::isnan(score) || score < *cutoff)) {
        return Decision::stop("ASHA bracket " + std::to_string(bracket_index) + ", rung " +
                              std::to_string(bracket.rungs.size() - 1 - r) + " (" + options_.time_attr +
                              " >= " + number(rung.milestone) + "): " + metric_ + " " + number(value) +
                              " is worse than the cutoff " + number(sign * *cutoff) + " (top 1/" + number(rf) + " of " +
                              std::to_string(count) + " recorded)");
      }
      return Decision::keep_going();
    }
    return Decision::keep_going();
  }

  ASHAOptions options_;
  uint64_t seed_;
  Rng rng_;
  std::string metric_;
  Mode mode_ = kMin;
  std::vector<Bracket> brackets_;
  /// Trial id -> index of its bracket, while the trial lives.
  std::map<std::string, size_t> bracket_of_;
};

}  // namespace

std::shared_ptr<TrialScheduler> ASHA(ASHAOptions options) {
  return std::make_shared<AshaScheduler>(std::move(options));
}

namespace detail {
std::shared_ptr<TrialScheduler> asha_from_spec(const Json& spec) {
  ASHAOptions options;
  options.time_attr = spec_value("ASHA", spec, "time_attr", options.time_attr);
  options.metric = spec_value("ASHA", spec, "metric", options.metric);
  options.mode = mode_from_spec("ASHA", spec);
  options.max_t = spec_value("ASHA", spec, "max_t", options.max_t);
  options.grace_period = spec_value("ASHA", spec, "grace_period", options.grace_period);
  options.reduction_factor = spec_value("ASHA", spec, "reduction_factor", options.reduction_factor);
  options.brackets = spec_value("ASHA", spec, "brackets", options.brackets);
  options.stop_last_trials = spec_value("ASHA", spec, "stop_last_trials", options.stop_last_trials);
  if (spec.contains("seed") && !spec["seed"].is_null()) options.seed = spec_value<uint64_t>("ASHA", spec, "seed", 0);
  return ASHA(std::move(options));
}
}  // namespace detail

}  // namespace gantry::tune
