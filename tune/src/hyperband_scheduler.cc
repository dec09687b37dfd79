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

namespace gantry::tune {
namespace {

using detail::number;
using detail::number_at;

// Ceiling that ignores rounding noise (5 * 9 / 3 must be 15, not 16).
int64_t ceil_count(double x) { return static_cast<int64_t>(std::ceil(x - 1e-9)); }

// Synchronous successive halving in brackets. Trials fill bracket s = 0, 1, ..., s_max of
// a band in turn (Ray's order: the bracket without halving first), then a new band.
// Bracket s holds n = ceil((s_max+1)/(s+1) * rf^s) trials and runs s halvings: each round
// every live trial runs to the round's milestone (max_t * rf^(k-s) in round k) and waits
// there PAUSED; when the last one arrives (and the bracket holds all its n trials, or the
// searcher has no more) the top ceil(n/rf) go on to the next milestone and the rest are
// stopped. Unlike Ray, a trial reaching max_t stops at once with
// stop_last_trials instead of waiting for its bracket, since it would be stopped then.
class HyperBandScheduler final : public TrialScheduler {
 public:
  explicit HyperBandScheduler(HyperBandOptions options) : options_(std::move(options)) {
    if (!(options_.max_t > 0)) throw Error("HyperBand: max_t must be > 0, got " + number(options_.max_t));
    if (!(options_.reduction_factor > 1)) {
      throw Error("HyperBand: reduction_factor must be > 1, got " + number(options_.reduction_factor));
    }
    if (options_.time_attr.empty()) throw Error("HyperBand: time_attr is empty");
    const double tolerance = 1 + 1e-9;
    while (std::pow(options_.reduction_factor, s_max_ + 1) <= options_.max_t * tolerance) ++s_max_;
  }

  void setup(const std::string& metric, Mode mode) override {
    metric_ = options_.metric.empty() ? metric : options_.metric;
    if (metric_.empty()) {
      throw Error("HyperBand: no metric to compare trials by; set TuneConfig::metric or HyperBandOptions::metric");
    }
    mode_ = options_.mode.value_or(mode);
  }

  void on_trial_add(const TrialTable& table, const TrialView& trial) override {
    if (bracket_of_.count(trial.trial_id) != 0) return;
    if (brackets_.empty() || brackets_.back().members.size() >= static_cast<size_t>(brackets_.back().size)) {
      int band = 0;
      int s = 0;
      if (!brackets_.empty()) {
        band = brackets_.back().band;
        s = brackets_.back().s + 1;
        if (s > s_max_) {
          ++band;
          s = 0;
        }
      }
      brackets_.push_back(make_bracket(band, s));
    }
    brackets_.back().members.push_back(Member{trial.trial_id});
    bracket_of_[trial.trial_id] = brackets_.size() - 1;
  }

  Decision on_trial_result(const TrialTable& table, const TrialView& trial, const Json& result) override {
    const std::optional<double> time = number_at(result, options_.time_attr);
    const std::optional<double> value = number_at(result, metric_);
    auto it = bracket_of_.find(trial.trial_id);
    if (!time || !value || it == bracket_of_.end()) return Decision::keep_going();
    Bracket& bracket = brackets_[it->second];
    Member* member = find_member(bracket, trial.trial_id);
    if (member == nullptr) return Decision::keep_going();
    // A result after the trial was cut (before the Tuner ended it) changes nothing.
    if (!member->live) return Decision::stop("HyperBand " + describe(bracket) + ": cut from its bracket earlier");
    member->time = *time;
    member->score = (mode_ == kMax ? 1.0 : -1.0) * *value;

    if (options_.stop_last_trials && *time >= options_.max_t) {
      member->live = false;
      settle(bracket, nullptr);
      return Decision::stop("HyperBand: reached max_t (" + options_.time_attr + " " + number(*time) +
                            " >= " + number(options_.max_t) + ")");
    }
    if (runs_freely(bracket) || *time < bracket.milestone) return Decision::keep_going();

    std::optional<Decision> cut = settle(bracket, &trial.trial_id);
    if (cut) return *cut;
    if (*time < bracket.milestone) {
      Decision go_on;
      go_on.reason =
          "HyperBand " + describe(bracket) + ": promoted to " + options_.time_attr + " " + number(bracket.milestone);
      return go_on;
    }
    size_t waiting_for = 0;
    for (const Member& m : bracket.members) waiting_for += m.live && m.time < bracket.milestone ? 1 : 0;
    return Decision::pause("HyperBand " + describe(bracket) + ": reached " + options_.time_attr + " " +
                           number(bracket.milestone) + "; waits for " + std::to_string(waiting_for) +
                           " more trial(s) of its bracket");
  }

  void on_trial_complete(const TrialTable& table, const TrialView& trial, const Json& result) override {
    drop(trial.trial_id);
  }

  void on_trial_remove(const TrialTable& table, const TrialView& trial) override { drop(trial.trial_id); }

  void on_no_more_trials(const TrialTable& table) override {
    no_more_trials_ = true;
    for (Bracket& bracket : brackets_) settle(bracket, nullptr);
  }

  std::optional<std::string> choose_trial_to_run(const TrialTable& table) override {
    // Band by band, the least complete bracket first, so brackets advance evenly.
    std::vector<size_t> order(brackets_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [this](size_t a, size_t b) {
      if (brackets_[a].band != brackets_[b].band) return brackets_[a].band < brackets_[b].band;
      return completion(brackets_[a]) < completion(brackets_[b]);
    });
    for (size_t index : order) {
      const Bracket& bracket = brackets_[index];
      for (const Member& member : bracket.members) {
        const TrialView* view = table.find(member.trial_id);
        if (view == nullptr) continue;
        if (view->status == TrialStatus::kPending) return member.trial_id;
        // A paused trial runs again once it has work left in its bracket's round: it was
        // promoted, or it was paused before reaching the milestone.
        if (view->status == TrialStatus::kPaused && member.live &&
            (runs_freely(bracket) || member.time < bracket.milestone)) {
          return member.trial_id;
        }
      }
    }
    for (const TrialView* view : table.trials()) {
      if (view->status == TrialStatus::kPending && bracket_of_.count(view->trial_id) == 0) return view->trial_id;
    }
    return std::nullopt;
  }

  std::vector<std::string> take_trials_to_stop() override { return std::exchange(to_stop_, {}); }

  std::string name() const override { return "hyperband"; }

  Json spec() const override {
    return {{"name", "hyperband"},
            {"time_attr", options_.time_attr},
            {"metric", options_.metric},
            {"mode", options_.mode ? Json(*options_.mode == kMax ? "max" : "min") : Json(nullptr)},
            {"max_t", options_.max_t},
            {"reduction_factor", options_.reduction_factor},
            {"stop_last_trials", options_.stop_last_trials}};
  }

 private:
  struct Member {
    std::string trial_id;
    bool live = true;
    /// Its latest time_attr (0 before its first result) and value, larger is better.
    double time = 0;
    double score = -std::numeric_limits<double>::infinity();
  };
  struct Bracket {
    int band = 0;
    int s = 0;
    /// Trials the bracket takes.
    int64_t size = 0;
    /// Trials kept in the current round, the milestone they run to and the halvings left.
    int64_t keep = 0;
    double milestone = 0;
    int halvings_left = 0;
    /// Every trial added, in order.
    std::vector<Member> members;
  };

  Bracket make_bracket(int band, int s) const {
    Bracket bracket;
    bracket.band = band;
    bracket.s = s;
    const double rf = options_.reduction_factor;
    bracket.size = ceil_count(static_cast<double>(s_max_ + 1) * std::pow(rf, s) / (s + 1));
    bracket.keep = bracket.size;
    bracket.milestone = options_.max_t * std::pow(rf, -s);
    bracket.halvings_left = s;
    return bracket;
  }

  std::string describe(const Bracket& bracket) const {
    return "band " + std::to_string(bracket.band) + " bracket s=" + std::to_string(bracket.s);
  }

  // In its last round without stop_last_trials, a bracket lets its trials run to their end.
  bool runs_freely(const Bracket& bracket) const { return bracket.halvings_left == 0 && !options_.stop_last_trials; }

  static Member* find_member(Bracket& bracket, const std::string& trial_id) {
    for (Member& m : bracket.members) {
      if (m.trial_id == trial_id) return &m;
    }
    return nullptr;
  }

  void drop(const std::string& trial_id) {
    auto it = bracket_of_.find(trial_id);
    if (it == bracket_of_.end()) return;
    Bracket& bracket = brackets_[it->second];
    Member* member = find_member(bracket, trial_id);
    if (member == nullptr || !member->live) return;
    member->live = false;
    // Its bracket may have been waiting only for it.
    settle(bracket, nullptr);
  }

  // Halves the bracket for as long as every live trial has reached its milestone. Trials
  // cut are queued for take_trials_to_stop, except `current` (the trial whose result is
  // being handled), for which the stop decision is returned.
  std::optional<Decision> settle(Bracket& bracket, const std::string* current) {
    std::optional<Decision> current_cut;
    while (bracket.halvings_left > 0) {
      // A bracket halves once it holds all its trials (they are created one by one as
      // slots free up), or once no more trials will come.
      if (!no_more_trials_ && bracket.members.size() < static_cast<size_t>(bracket.size)) break;
      std::vector<Member*> live;
      for (Member& m : bracket.members) {
        if (m.live) live.push_back(&m);
      }
      if (live.empty()) break;
      if (std::any_of(live.begin(), live.end(), [&](const Member* m) { return m->time < bracket.milestone; })) break;

      const double reached = bracket.milestone;
      --bracket.halvings_left;
      bracket.keep = ceil_count(static_cast<double>(bracket.keep) / options_.reduction_factor);
      bracket.milestone = options_.max_t * std::pow(options_.reduction_factor, -bracket.halvings_left);
      // Best first; equal values keep the earlier trial.
      std::stable_sort(live.begin(), live.end(), [](const Member* a, const Member* b) {
        if (std::isnan(b->score)) return !std::isnan(a->score);
        return a->score > b->score;
      });
      const size_t keep = static_cast<size_t>(bracket.keep);
      for (size_t i = keep; i < live.size(); ++i) {
        live[i]->live = false;
        if (current != nullptr && live[i]->trial_id == *current) {
          current_cut =
              Decision::stop("HyperBand " + describe(bracket) + ": at " + options_.time_attr + " " + number(reached) +
                             ", " + metric_ + " " + number((mode_ == kMax ? 1.0 : -1.0) * live[i]->score) +
                             " is not in the top " + std::to_string(keep) + " of " + std::to_string(live.size()));
        } else {
          to_stop_.push_back(live[i]->trial_id);
        }
      }
    }
    return current_cut;
  }

  // Fraction of the bracket's planned work done: the time its trials ran over the time
  // all rounds take (n_k trials running from milestone k-1 to milestone k).
  double completion(const Bracket& bracket) const {
    double planned = 0;
    double previous = 0;
    double count = static_cast<double>(bracket.size);
    for (int k = 0; k <= bracket.s; ++k) {
      const double milestone = options_.max_t * std::pow(options_.reduction_factor, k - bracket.s);
      planned += count * (milestone - previous);
      previous = milestone;
      count = static_cast<double>(ceil_count(count / options_.reduction_factor));
    }
    double done = 0;
    for (const Member& m : bracket.members) done += m.time;
    return planned > 0 ? done / planned : 0;
  }

  HyperBandOptions options_;
  int s_max_ = 0;
  std::string metric_;
  Mode mode_ = kMin;
  /// In creation order; the last one is being filled.
  std::vector<Bracket> brackets_;
  std::map<std::string, size_t> bracket_of_;
  std::vector<std::string> to_stop_;
  bool no_more_trials_ = false;  ///< the searcher is done: brackets need not fill up
};

}  // namespace

std::shared_ptr<TrialScheduler> HyperBand(HyperBandOptions options) {
  return std::make_shared<HyperBandScheduler>(std::move(options));
}

namespace detail {
std::shared_ptr<TrialScheduler> hyperband_from_spec(const Json& spec) {
  HyperBandOptions options;
  options.time_attr = spec_value("HyperBand", spec, "time_attr", options.time_attr);
  options.metric = spec_value("HyperBand", spec, "metric", options.metric);
  options.mode = mode_from_spec("HyperBand", spec);
  options.max_t = spec_value("HyperBand", spec, "max_t", options.max_t);
  options.reduction_factor = spec_value("HyperBand", spec, "reduction_factor", options.reduction_factor);
  options.stop_last_trials = spec_value("HyperBand", spec, "stop_last_trials", options.stop_last_trials);
  return HyperBand(std::move(options));
}
}  // namespace detail

}  // namespace gantry::tune
