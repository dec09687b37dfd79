#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fake_trial_table.h"
#include "gantry/errors.h"
#include "gantry/tune/scheduler.h"

namespace gantry::tune {
namespace {

using test::FakeTrialTable;
using Action = Decision::Action;

Json at_iteration(double iteration, double loss) { return {{"training_iteration", iteration}, {"loss", loss}}; }

std::shared_ptr<TrialScheduler> hyperband(HyperBandOptions options) {
  auto scheduler = HyperBand(std::move(options));
  scheduler->setup("loss", kMin);
  return scheduler;
}

// Reports iterations 1, 2, ... with `loss` until the scheduler does something other than
// continue (or `limit` is passed); returns that iteration and decision.
std::pair<int, Decision> run_until_decision(TrialScheduler& scheduler, FakeTrialTable& table, const std::string& id,
                                            double loss, int limit) {
  for (int iteration = 1; iteration <= limit; ++iteration) {
    Decision decision = table.report(scheduler, id, at_iteration(iteration, loss));
    if (decision.action != Action::kContinue) return {iteration, decision};
  }
  return {limit + 1, Decision::keep_going()};
}

TEST(HyperBandTest, BracketsOfMaxT81AndRf3) {
  // s_max = 4. Bracket s takes ceil(5/(s+1) * 3^s) trials with a first milestone of
  // 81 * 3^-s, filled in Ray's order s = 0, 1, ...:
  struct Expected {
    int s;
    int trials;
    int first_milestone;
  };
  const std::vector<Expected> brackets = {{0, 5, 81}, {1, 8, 27}, {2, 15, 9}, {3, 34, 3}, {4, 81, 1}};
  auto scheduler = hyperband({.max_t = 81, .reduction_factor = 3});
  FakeTrialTable table;
  int next = 0;
  for (const Expected& b : brackets) {
    std::vector<std::string> ids;
    for (int i = 0; i < b.trials; ++i) {
      ids.push_back("t" + std::to_string(next++));
      table.add(*scheduler, ids.back());
    }
    for (int i = 0; i < b.trials; ++i) {
      // Better and better, so the last to arrive is promoted when it completes the round.
      const double loss = 100.0 - i;
      if (b.s > 0 && i + 1 == b.trials) {
        auto [iteration, decision] = run_until_decision(*scheduler, table, ids[i], loss, b.first_milestone - 1);
        EXPECT_EQ(iteration, b.first_milestone) << "no decision before the milestone";
        Decision promoted = table.report(*scheduler, ids[i], at_iteration(b.first_milestone, loss));
        EXPECT_EQ(promoted.action, Action::kContinue);
        EXPECT_NE(promoted.reason.find("promoted to training_iteration " + std::to_string(b.first_milestone * 3)),
                  std::string::npos)
            << promoted.reason;
        continue;
      }
      auto [iteration, decision] = run_until_decision(*scheduler, table, ids[i], loss, 81);
      EXPECT_EQ(iteration, b.first_milestone) << "bracket s=" << b.s << ", trial " << i;
      if (b.s == 0) {
        EXPECT_EQ(decision.action, Action::kStop) << "no halving: every trial runs to max_t";
        EXPECT_NE(decision.reason.find("max_t"), std::string::npos) << decision.reason;
      } else {
        EXPECT_EQ(decision.action, Action::kPause) << "bracket s=" << b.s << ", trial " << i;
        EXPECT_NE(decision.reason.find("bracket s=" + std::to_string(b.s)), std::string::npos) << decision.reason;
      }
    }
    if (b.s > 0) {
      // The round is complete: the top ceil(n/3) go on, the others are cut.
      const int kept = (b.trials + 2) / 3;
      EXPECT_EQ(scheduler->take_trials_to_stop().size(), static_cast<size_t>(b.trials - kept)) << "bracket s=" << b.s;
      EXPECT_TRUE(scheduler->take_trials_to_stop().empty()) << "each cut is told once";
    }
  }
  // The next trial opens bracket s=0 of a new band.
  table.add(*scheduler, "next");
  auto [iteration, decision] = run_until_decision(*scheduler, table, "next", 1.0, 81);
  EXPECT_EQ(iteration, 81);
  EXPECT_EQ(decision.action, Action::kStop);
}

TEST(HyperBandTest, PausesAtTheMilestoneAndPromotesTheTopThird) {
  // max_t 9, rf 3: s_max = 2; brackets s=0 (3 trials to 9), s=1 (5 trials: 3, then 9),
  // s=2 (9 trials: 1, 3, 9).
  auto scheduler = hyperband({.max_t = 9, .reduction_factor = 3});
  FakeTrialTable table;
  for (const char* id : {"x0", "x1", "x2"}) table.add(*scheduler, id);
  for (const char* id : {"a", "b", "c", "d", "e"}) table.add(*scheduler, id);
  for (const char* id : {"x0", "x1", "x2"}) table.at(id).status = TrialStatus::kTerminated;

  const std::vector<std::pair<std::string, double>> losses = {{"a", 0.5}, {"b", 0.1}, {"c", 0.9}, {"d", 0.3}};
  for (const auto& [id, loss] : losses) {
    EXPECT_EQ(table.report(*scheduler, id, at_iteration(1, loss)).action, Action::kContinue);
    EXPECT_EQ(table.report(*scheduler, id, at_iteration(2, loss)).action, Action::kContinue);
    Decision paused = table.report(*scheduler, id, at_iteration(3, loss));
    EXPECT_EQ(paused.action, Action::kPause) << id;
    EXPECT_NE(paused.reason.find("reached training_iteration 3"), std::string::npos) << paused.reason;
  }
  // Waiting at the milestone, none of them is chosen: only "e" has work to do.
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "e");
  EXPECT_TRUE(scheduler->take_trials_to_stop().empty());

  // The last of the bracket arrives: ceil(5/3) = 2 go on ("b" 0.1 and "d" 0.3).
  Decision last = table.report(*scheduler, "e", at_iteration(3, 0.7));
  EXPECT_EQ(last.action, Action::kStop);
  EXPECT_NE(last.reason.find("not in the top 2 of 5"), std::string::npos) << last.reason;
  std::vector<std::string> cut = scheduler->take_trials_to_stop();
  std::sort(cut.begin(), cut.end());
  EXPECT_EQ(cut, (std::vector<std::string>{"a", "c"}));
  for (const std::string& id : cut) table.at(id).status = TrialStatus::kTerminated;

  EXPECT_EQ(scheduler->choose_trial_to_run(table), "b");
  // A cut trial that runs anyway (resumed by someone else) is stopped at its next result.
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(4, 0.01)).action, Action::kStop);
  table.at("b").status = TrialStatus::kRunning;
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "d");
  // The last round runs to max_t, where stop_last_trials ends them.
  EXPECT_EQ(table.report(*scheduler, "b", at_iteration(8, 0.05)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", at_iteration(9, 0.05)).action, Action::kStop);
}

TEST(HyperBandTest, ABracketWaitsToFillUpUnlessNoMoreTrialsCome) {
  // Trials are created one by one as slots free up: the s=1 bracket (5 trials) must not
  // halve with the three it holds so far, until the searcher says no more will come.
  auto scheduler = hyperband({.max_t = 9, .reduction_factor = 3});
  FakeTrialTable table;
  for (const char* id : {"x0", "x1", "x2"}) table.add(*scheduler, id);
  for (const char* id : {"x0", "x1", "x2"}) table.at(id).status = TrialStatus::kTerminated;
  for (const auto& [id, loss] : std::vector<std::pair<std::string, double>>{{"a", 0.5}, {"b", 0.1}, {"c", 0.9}}) {
    table.add(*scheduler, id);
    EXPECT_EQ(run_until_decision(*scheduler, table, id, loss, 9).second.action, Action::kPause) << id;
  }
  EXPECT_TRUE(scheduler->take_trials_to_stop().empty()) << "halved a bracket holding 3 of its 5 trials";
  EXPECT_EQ(scheduler->choose_trial_to_run(table), std::nullopt);

  scheduler->on_no_more_trials(table);
  // ceil(5/3) = 2 go on ("b" and "a"); "c" is cut.
  EXPECT_EQ(scheduler->take_trials_to_stop(), std::vector<std::string>{"c"});
  table.at("c").status = TrialStatus::kTerminated;
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "a");
}

TEST(HyperBandTest, ThePromotedTrialWhoseResultCompletesTheRoundContinues) {
  auto scheduler = hyperband({.max_t = 9, .reduction_factor = 3});
  FakeTrialTable table;
  for (const char* id : {"x0", "x1", "x2", "a", "b", "c", "d", "e"}) table.add(*scheduler, id);
  for (const char* id : {"a", "b", "c", "d"}) {
    EXPECT_EQ(table.report(*scheduler, id, at_iteration(3, 1.0)).action, Action::kPause);
  }
  Decision best = table.report(*scheduler, "e", at_iteration(3, 0.01));
  EXPECT_EQ(best.action, Action::kContinue);
  EXPECT_NE(best.reason.find("promoted to training_iteration 9"), std::string::npos) << best.reason;
  // Equal values: the earlier trial is kept.
  EXPECT_EQ(scheduler->take_trials_to_stop(), (std::vector<std::string>{"b", "c", "d"}));
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "x0") << "pending trials are started";
}

TEST(HyperBandTest, ARemovedTrialNoLongerHoldsItsBracketBack) {
  auto scheduler = hyperband({.max_t = 9, .reduction_factor = 3});
  FakeTrialTable table;
  for (const char* id : {"x0", "x1", "x2", "a", "b", "c", "d", "e"}) table.add(*scheduler, id);
  const std::vector<std::pair<std::string, double>> losses = {{"a", 0.4}, {"b", 0.3}, {"c", 0.2}, {"d", 0.1}};
  for (const auto& [id, loss] : losses) {
    EXPECT_EQ(table.report(*scheduler, id, at_iteration(3, loss)).action, Action::kPause);
  }
  EXPECT_EQ(table.report(*scheduler, "e", at_iteration(1, 0.01)).action, Action::kContinue);
  table.at("e").status = TrialStatus::kError;
  scheduler->on_trial_remove(table, table.at("e"));
  // Halving among the four left: the top 2 ("d", "c") go on.
  EXPECT_EQ(scheduler->take_trials_to_stop(), (std::vector<std::string>{"b", "a"}));
  for (const char* id : {"x0", "x1", "x2"}) table.at(id).status = TrialStatus::kTerminated;
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "c");
}

TEST(HyperBandTest, WithoutStopLastTrialsTheLastRoundRunsFreely) {
  auto scheduler = hyperband({.max_t = 9, .reduction_factor = 3, .stop_last_trials = false});
  FakeTrialTable table;
  table.add(*scheduler, "a");
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(9, 1)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(50, 1)).action, Action::kContinue);
}

TEST(HyperBandTest, ResultsWithoutTheMetricContinue) {
  auto scheduler = hyperband({.max_t = 9, .reduction_factor = 3});
  FakeTrialTable table;
  table.add(*scheduler, "a");
  EXPECT_EQ(table.report(*scheduler, "a", {{"training_iteration", 9}}).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "a", {{"loss", 1}}).action, Action::kContinue);
}

TEST(HyperBandTest, RejectsInvalidOptionsClearly) {
  EXPECT_THROW(HyperBand({.max_t = 0}), Error);
  EXPECT_THROW(HyperBand({.reduction_factor = 1}), Error);
  EXPECT_THROW(HyperBand()->setup("", kMin), Error);
}

TEST(HyperBandTest, SpecRebuildsAnEqualScheduler) {
  auto original = HyperBand({.metric = "acc", .mode = kMax, .max_t = 27, .reduction_factor = 3});
  const Json spec = original->spec();
  auto rebuilt = make_scheduler(spec);
  EXPECT_EQ(rebuilt->name(), "hyperband");
  EXPECT_EQ(rebuilt->spec(), spec);
  EXPECT_EQ(spec["mode"], "max");
  EXPECT_EQ(spec["max_t"], 27.0);
}

}  // namespace
}  // namespace gantry::tune
