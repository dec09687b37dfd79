#pragma once

// A hand-made TrialTable shared by the scheduler units (asha_test.cc, hyperband_test.cc,
// median_stopping_test.cc, pbt_test.cc), which are compiled into one test binary.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gantry/tune/scheduler.h"

namespace gantry::tune::test {

/// The trials a Tuner would hold, made by hand, for scheduler units; report() plays the
/// Tuner's part for one result: it fills last_result, asks the scheduler and applies the
/// decision's status.
///   FakeTrialTable table;
///   table.add(*scheduler, "a");
///   table.start_all();
///   Decision d = table.report(*scheduler, "a", {{"training_iteration", 1}, {"loss", 0.5}});
/// Not thread-safe; one test drives it.
class FakeTrialTable final : public TrialTable {
 public:
  /// Adds a pending trial `id` and tells the scheduler, as the Tuner does on creating one.
  TrialView& add(TrialScheduler& scheduler, const std::string& id, Json config = Json::object()) {
    trials_.push_back(std::make_unique<TrialView>(TrialView{id, std::move(config)}));
    scheduler.on_trial_add(*this, *trials_.back());
    return *trials_.back();
  }
  /// The trial `id`, which must have been added.
  TrialView& at(const std::string& id) { return *const_cast<TrialView*>(find(id)); }
  /// Every pending trial starts, as when there are slots for all.
  void start_all() {
    for (auto& t : trials_) {
      if (t->status == TrialStatus::kPending) t->status = TrialStatus::kRunning;
    }
  }
  std::vector<const TrialView*> trials() const override {
    std::vector<const TrialView*> all;
    for (const auto& t : trials_) all.push_back(t.get());
    return all;
  }
  const TrialView* find(const std::string& id) const override {
    for (const auto& t : trials_) {
      if (t->trial_id == id) return t.get();
    }
    return nullptr;
  }

  /// Delivers `result` (with "trial_id" set) from the running trial `id` to the scheduler,
  /// then marks the trial terminated on a stop and paused on a pause; returns the decision.
  Decision report(TrialScheduler& scheduler, const std::string& id, Json result) {
    TrialView& trial = at(id);
    result["trial_id"] = id;
    trial.status = TrialStatus::kRunning;
    trial.last_result = result;
    Decision decision = scheduler.on_trial_result(*this, trial, result);
    if (decision.action == Decision::Action::kStop) trial.status = TrialStatus::kTerminated;
    if (decision.action == Decision::Action::kPause) trial.status = TrialStatus::kPaused;
    return decision;
  }

 private:
  std::vector<std::unique_ptr<TrialView>> trials_;
};

}  // namespace gantry::tune::test
