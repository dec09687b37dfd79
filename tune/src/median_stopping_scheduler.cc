#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "gantry/errors.h"
#include "gantry/tune/scheduler.h"
#include "scheduler_options.h"
#include "scheduler_specs.h"

namespace gantry::tune {
namespace {

using detail::number;
using detail::number_at;

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

class MedianStoppingScheduler final : public TrialScheduler {
 public:
  explicit MedianStoppingScheduler(MedianStoppingOptions options) : options_(std::move(options)) {
    if (options_.time_attr.empty()) throw Error("MedianStopping: time_attr is empty");
    if (!(options_.grace_period >= 0)) {
      throw Error("MedianStopping: grace_period must be >= 0, got " + number(options_.grace_period));
    }
    if (options_.min_samples_required < 1) {
      throw Error("MedianStopping: min_samples_required must be >= 1, got " +
                  std::to_string(options_.min_samples_required));
    }
    if (!(options_.min_time_slice >= 0)) {
      throw Error("MedianStopping: min_time_slice must be >= 0, got " + number(options_.min_time_slice));
    }
  }

  void setup(const std::string& metric, Mode mode) override {
    metric_ = options_.metric.empty() ? metric : options_.metric;
    if (metric_.empty()) {
      throw Error(
          "MedianStopping: no metric to compare trials by; set TuneConfig::metric or "
          "MedianStoppingOptions::metric");
    }
    mode_ = options_.mode.value_or(mode);
  }

  Decision on_trial_result(const TrialTable& table, const TrialView& trial, const Json& result) override {
    const std::optional<double> time = number_at(result, options_.time_attr);
    const std::optional<double> value = number_at(result, metric_);
    if (!time || !value) return Decision::keep_going();
    // A trial the rule paused (hard_stop off) runs to its end when it resumes.
    if (stopped_.count(trial.trial_id) != 0) return Decision::keep_going();
    record(trial.trial_id, *time, *value);
    if (*time < options_.grace_period) return Decision::keep_going();

    std::vector<double> running_means;
    for (const auto& [id, samples] : results_) {
      if (id == trial.trial_id || samples.back().time < *time) continue;
      if (std::optional<double> mean = running_mean(samples, *time)) running_means.push_back(*mean);
    }
    if (running_means.size() < static_cast<size_t>(options_.min_samples_required)) {
      return on_insufficient_samples(table, trial.trial_id, *time, running_means.size());
    }

    const size_t others = running_means.size();
    const double middle = median(std::move(running_means));
    const double best = best_value(results_[trial.trial_id]);
    const bool worse = std::isnan(best) || (mode_ == kMax ? best < middle : best > middle);
    if (!worse) return Decision::keep_going();
    stopped_.insert(trial.trial_id);
    const std::string why = "median stopping at " + options_.time_attr + " " + number(*time) + ": best " + metric_ +
                            " " + number(best) + " is worse than the median " + number(middle) + " of " +
                            std::to_string(others) + " other trials' running averages";
    return options_.hard_stop ? Decision::stop(why) : Decision::pause(why);
  }

  void on_trial_complete(const TrialTable& table, const TrialView& trial, const Json& result) override {
    const std::optional<double> time = number_at(result, options_.time_attr);
    const std::optional<double> value = number_at(result, metric_);
    if (time && value) record(trial.trial_id, *time, *value);
  }

  std::string name() const override { return "median_stopping"; }

  Json spec() const override {
    return {{"name", "median_stopping"},
            {"time_attr", options_.time_attr},
            {"metric", options_.metric},
            {"mode", options_.mode ? Json(*options_.mode == kMax ? "max" : "min") : Json(nullptr)},
            {"grace_period", options_.grace_period},
            {"min_samples_required", options_.min_samples_required},
            {"min_time_slice", options_.min_time_slice},
            {"hard_stop", options_.hard_stop}};
  }

 private:
  struct Sample {
    double time = 0;
    double value = 0;
  };

  // The final result reaches on_trial_complete after on_trial_result already saw it;
  // only a newer one counts, so it is not averaged twice.
  void record(const std::string& trial_id, double time, double value) {
    std::vector<Sample>& samples = results_[trial_id];
    if (!samples.empty() && time <= samples.back().time) return;
    samples.push_back({time, value});
  }

  // The mean of a trial's values from grace_period up to `time`, NaN values left out;
  // nullopt when there are none in that window.
  std::optional<double> running_mean(const std::vector<Sample>& samples, double time) const {
    double sum = 0;
    size_t count = 0;
    for (const Sample& s : samples) {
      if (s.time < options_.grace_period || s.time > time || std::isnan(s.value)) continue;
      sum += s.value;
      ++count;
    }
    if (count == 0) return std::nullopt;
    return sum / static_cast<double>(count);
  }

  // NaN when any value is NaN: a diverged trial is worse than any median.
  double best_value(const std::vector<Sample>& samples) const {
    double best = mode_ == kMax ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
    for (const Sample& s : samples) {
      if (std::isnan(s.value)) return s.value;
      best = mode_ == kMax ? std::max(best, s.value) : std::min(best, s.value);
    }
    return best;
  }

  // Too few other trials got this far to judge: like Ray, yield the slot to a waiting
  // trial (at most once per min_time_slice) so that others catch up.
  Decision on_insufficient_samples(const TrialTable& table, const std::string& trial_id, double time, size_t samples) {
    auto last = last_pause_.find(trial_id);
    if (last != last_pause_.end() && !(time - last->second > options_.min_time_slice)) {
      return Decision::keep_going();
    }
    bool others_wait = false;
    for (const TrialView* view : table.trials()) {
      if (view->trial_id != trial_id &&
          (view->status == TrialStatus::kPending || view->status == TrialStatus::kPaused)) {
        others_wait = true;
        break;
      }
    }
    if (!others_wait) return Decision::keep_going();
    last_pause_[trial_id] = time;
    return Decision::pause("median stopping: only " + std::to_string(samples) + " of the " +
                           std::to_string(options_.min_samples_required) + " other trials needed reached " +
                           options_.time_attr + " " + number(time) + "; yields to waiting trials");
  }

  MedianStoppingOptions options_;
  std::string metric_;
  Mode mode_ = kMin;
  /// Trial id -> its results with the metric, in time order.
  std::map<std::string, std::vector<Sample>> results_;
  /// Trials the rule stopped or paused for good.
  std::set<std::string> stopped_;
  /// Trial id -> time_attr when the rule last paused it to yield.
  std::map<std::string, double> last_pause_;
};

}  // namespace

std::shared_ptr<TrialScheduler> MedianStopping(MedianStoppingOptions options) {
  return std::make_shared<MedianStoppingScheduler>(std::move(options));
}

namespace detail {
std::shared_ptr<TrialScheduler> median_stopping_from_spec(const Json& spec) {
  MedianStoppingOptions options;
  options.time_attr = spec_value("MedianStopping", spec, "time_attr", options.time_attr);
  options.metric = spec_value("MedianStopping", spec, "metric", options.metric);
  options.mode = mode_from_spec("MedianStopping", spec);
  options.grace_period = spec_value("MedianStopping", spec, "grace_period", options.grace_period);
  options.min_samples_required =
      spec_value("MedianStopping", spec, "min_samples_required", options.min_samples_required);
  options.min_time_slice = spec_value("MedianStopping", spec, "min_time_slice", options.min_time_slice);
  options.hard_stop = spec_value("MedianStopping", spec, "hard_stop", options.hard_stop);
  return MedianStopping(std::move(options));
}
}  // namespace detail

}  // namespace gantry::tune
