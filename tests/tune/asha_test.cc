#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "fake_trial_table.h"
#include "gantry/errors.h"
#include "gantry/tune/scheduler.h"

namespace gantry::tune {
namespace {

using test::FakeTrialTable;
using Action = Decision::Action;

Json at_iteration(int iteration, const std::string& metric, double value) {
  return {{"training_iteration", iteration}, {metric, value}};
}

std::shared_ptr<TrialScheduler> asha(ASHAOptions options, const std::string& metric = "loss", Mode mode = kMin) {
  auto scheduler = ASHA(std::move(options));
  scheduler->setup(metric, mode);
  return scheduler;
}

TEST(AshaTest, StopsATrialBelowTheRungCutoffWhenMinimising) {
  // Rungs at 1, 2, 4, 8 (and 16 = max_t); the cutoff keeps the top half.
  auto scheduler = asha({.max_t = 16, .grace_period = 1, .reduction_factor = 2, .seed = 7});
  FakeTrialTable table;
  for (const char* id : {"a", "b", "c", "d"}) table.add(*scheduler, id);

  // The first value at a rung has nothing to be compared with.
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(1, "loss", 1.0)).action, Action::kContinue);
  Decision b = table.report(*scheduler, "b", at_iteration(1, "loss", 2.0));
  EXPECT_EQ(b.action, Action::kStop);
  EXPECT_NE(b.reason.find("rung 0 (training_iteration >= 1)"), std::string::npos) << b.reason;
  EXPECT_NE(b.reason.find("cutoff 1 "), std::string::npos) << b.reason;
  // Recorded {1, 2}: the median 1.5 is the cutoff; 1.4 is better.
  EXPECT_EQ(table.report(*scheduler, "c", at_iteration(1, "loss", 1.4)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "d", at_iteration(1, "loss", 1.6)).action, Action::kStop);

  // Between rungs nothing is decided, however bad the value.
  EXPECT_EQ(table.report(*scheduler, "c", at_iteration(2, "loss", 9.0)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "c", at_iteration(3, "loss", 99.0)).action, Action::kContinue);
  // At rung 2 "c" (9.0) is the first recorded; "a" with 10.0 is worse.
  Decision a = table.report(*scheduler, "a", at_iteration(2, "loss", 10.0));
  EXPECT_EQ(a.action, Action::kStop);
  EXPECT_NE(a.reason.find("training_iteration >= 2"), std::string::npos) << a.reason;
}

TEST(AshaTest, StopsATrialBelowTheRungCutoffWhenMaximising) {
  auto scheduler = asha({.max_t = 16, .grace_period = 1, .reduction_factor = 2, .seed = 7}, "accuracy", kMax);
  FakeTrialTable table;
  for (const char* id : {"a", "b", "c"}) table.add(*scheduler, id);
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(1, "accuracy", 0.5)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", at_iteration(1, "accuracy", 0.7)).action, Action::kContinue);
  // Recorded {0.5, 0.7}: cutoff 0.6.
  Decision c = table.report(*scheduler, "c", at_iteration(1, "accuracy", 0.55));
  EXPECT_EQ(c.action, Action::kStop);
  EXPECT_NE(c.reason.find("cutoff 0.6 "), std::string::npos) << c.reason;
}

TEST(AshaTest, ModeFromTheOptionsWinsOverTheExperiments) {
  auto scheduler =
      asha({.metric = "accuracy", .mode = kMax, .max_t = 16, .reduction_factor = 2, .seed = 1}, "loss", kMin);
  FakeTrialTable table;
  table.add(*scheduler, "a");
  table.add(*scheduler, "b");
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(1, "accuracy", 0.9)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", at_iteration(1, "accuracy", 0.1)).action, Action::kStop);
}

TEST(AshaTest, QuantileInterpolatesLikeNumpy) {
  // rf 4: the cutoff is the 75th percentile of the recorded values.
  auto scheduler = asha({.max_t = 64, .grace_period = 1, .reduction_factor = 4, .seed = 3}, "score", kMax);
  FakeTrialTable table;
  for (int i = 0; i < 6; ++i) table.add(*scheduler, "t" + std::to_string(i));
  // Each better than the last: none is stopped.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(table.report(*scheduler, "t" + std::to_string(i), at_iteration(1, "score", i + 1)).action,
              Action::kContinue);
  }
  // Recorded 1..5: the 75th percentile is 4 (numpy's linear method); 3.9 is below.
  Decision last = table.report(*scheduler, "t5", at_iteration(1, "score", 3.9));
  EXPECT_EQ(last.action, Action::kStop);
  EXPECT_NE(last.reason.find("cutoff 4 "), std::string::npos) << last.reason;
  EXPECT_NE(last.reason.find("of 5 recorded"), std::string::npos) << last.reason;
}

TEST(AshaTest, StopsAtMaxTUnlessToldNotTo) {
  auto scheduler = asha({.max_t = 8, .grace_period = 1, .reduction_factor = 2, .seed = 1});
  FakeTrialTable table;
  table.add(*scheduler, "a");
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(7, "loss", 1)).action, Action::kContinue);
  Decision at_max = table.report(*scheduler, "a", at_iteration(8, "loss", 1));
  EXPECT_EQ(at_max.action, Action::kStop);
  EXPECT_NE(at_max.reason.find("max_t"), std::string::npos);

  auto free_running =
      asha({.max_t = 8, .grace_period = 1, .reduction_factor = 2, .stop_last_trials = false, .seed = 1});
  FakeTrialTable other;
  other.add(*free_running, "a");
  EXPECT_EQ(other.report(*free_running, "a", at_iteration(8, "loss", 1)).action, Action::kContinue);
  EXPECT_EQ(other.report(*free_running, "a", at_iteration(20, "loss", 1)).action, Action::kContinue);
}

TEST(AshaTest, BracketsStartTheirRungsLaterAndAreFavouredBySize) {
  // Bracket 0: rungs 1, 2, 4, 8; bracket 1: 2, 4, 8. Ray's weights e^(rungs - max rungs)
  // send about 73% of the trials to bracket 0.
  auto scheduler = asha({.max_t = 8, .grace_period = 1, .reduction_factor = 2, .brackets = 2, .seed = 42});
  FakeTrialTable table;
  const int n = 300;
  for (int i = 0; i < n; ++i) table.add(*scheduler, "t" + std::to_string(i));
  // Each trial worse than every earlier one: every trial but its bracket's first is
  // stopped at its bracket's first rung.
  int stopped_at_1 = 0;
  int stopped_at_2 = 0;
  for (int i = 0; i < n; ++i) {
    const std::string id = "t" + std::to_string(i);
    Decision first = table.report(*scheduler, id, at_iteration(1, "loss", i));
    if (first.action == Action::kStop) {
      EXPECT_NE(first.reason.find("bracket 0, rung 0 (training_iteration >= 1)"), std::string::npos) << first.reason;
      ++stopped_at_1;
      continue;
    }
    Decision second = table.report(*scheduler, id, at_iteration(2, "loss", i));
    if (second.action == Action::kStop) {
      // Bracket 0's trials are judged at 2 by its second rung, bracket 1's by its first.
      EXPECT_TRUE(second.reason.find("bracket 1, rung 0 (training_iteration >= 2)") != std::string::npos ||
                  second.reason.find("bracket 0, rung 1 (training_iteration >= 2)") != std::string::npos)
          << second.reason;
      if (second.reason.find("bracket 1") != std::string::npos) ++stopped_at_2;
    }
  }
  EXPECT_GT(stopped_at_1, n * 60 / 100);
  EXPECT_LT(stopped_at_1, n * 85 / 100);
  EXPECT_GT(stopped_at_2, n * 15 / 100);
  EXPECT_EQ(stopped_at_1 + stopped_at_2, n - 2);
}

TEST(AshaTest, ACompletedTrialCountsAtItsRung) {
  auto scheduler = asha({.max_t = 16, .grace_period = 1, .reduction_factor = 2, .seed = 1});
  FakeTrialTable table;
  table.add(*scheduler, "a");
  table.add(*scheduler, "b");
  scheduler->on_trial_complete(table, table.at("a"), at_iteration(1, "loss", 0.1));
  EXPECT_EQ(table.report(*scheduler, "b", at_iteration(1, "loss", 0.5)).action, Action::kStop);
}

TEST(AshaTest, ResultsWithoutTheMetricOrTimeContinue) {
  auto scheduler = asha({.max_t = 4, .grace_period = 1, .reduction_factor = 2, .seed = 1});
  FakeTrialTable table;
  table.add(*scheduler, "a");
  table.add(*scheduler, "b");
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(1, "loss", 0.1)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", {{"training_iteration", 1}, {"other", 5}}).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", {{"loss", 5}}).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", {{"training_iteration", 4}, {"loss", "high"}}).action, Action::kContinue);
}

TEST(AshaTest, ANaNValueIsStoppedAtARungWithACutoff) {
  auto scheduler = asha({.max_t = 16, .grace_period = 1, .reduction_factor = 2, .seed = 1});
  FakeTrialTable table;
  table.add(*scheduler, "a");
  table.add(*scheduler, "b");
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(1, "loss", 0.1)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", at_iteration(1, "loss", std::nan(""))).action, Action::kStop);
}

TEST(AshaTest, RejectsInvalidOptionsClearly) {
  auto message = [](ASHAOptions options) {
    try {
      asha(std::move(options));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({.grace_period = 0}).find("grace_period must be > 0"), std::string::npos);
  EXPECT_NE(message({.max_t = 5, .grace_period = 10}).find("max_t (5) must be >= grace_period (10)"),
            std::string::npos);
  EXPECT_NE(message({.reduction_factor = 1}).find("reduction_factor must be > 1"), std::string::npos);
  EXPECT_NE(message({.brackets = 0}).find("brackets must be >= 1"), std::string::npos);
  auto no_metric = ASHA({.seed = 1});
  EXPECT_THROW(no_metric->setup("", kMin), Error);
}

TEST(AshaTest, SpecRebuildsAnEqualScheduler) {
  auto original = asha({.max_t = 27, .grace_period = 1, .reduction_factor = 3, .brackets = 3});
  const Json spec = original->spec();
  EXPECT_EQ(spec["name"], "asha");
  ASSERT_TRUE(spec["seed"].is_number_unsigned()) << "the seed drawn is recorded";
  auto rebuilt = make_scheduler(spec);
  EXPECT_EQ(rebuilt->spec(), spec);
  EXPECT_EQ(rebuilt->name(), "asha");
  rebuilt->setup("loss", kMin);

  // Same bracket draws, so the same decisions on the same results.
  FakeTrialTable first;
  FakeTrialTable second;
  for (int i = 0; i < 40; ++i) {
    first.add(*original, "t" + std::to_string(i));
    second.add(*rebuilt, "t" + std::to_string(i));
  }
  for (int iteration : {1, 3, 9}) {
    for (int i = 0; i < 40; ++i) {
      const std::string id = "t" + std::to_string(i);
      if (first.at(id).status == TrialStatus::kTerminated) continue;
      const Json result = at_iteration(iteration, "loss", (i * 7919 % 40) / 10.0);
      Decision a = first.report(*original, id, result);
      Decision b = second.report(*rebuilt, id, result);
      EXPECT_EQ(a.action, b.action) << id;
      EXPECT_EQ(a.reason, b.reason);
    }
  }
}

TEST(SchedulerTest, MakeSchedulerNamesAnUnknownSpec) {
  try {
    make_scheduler({{"name", "bayesopt"}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"bayesopt\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_scheduler(nullptr), Error);
  EXPECT_THROW(make_scheduler({{"kind", "asha"}}), Error);
  EXPECT_THROW(make_scheduler({{"name", "asha"}, {"max_t", "long"}}), Error);
}

TEST(SchedulerTest, FifoContinuesAndRoundTrips) {
  auto fifo = make_scheduler(FIFO()->spec());
  EXPECT_EQ(fifo->name(), "fifo");
  fifo->setup("", kMin);
  FakeTrialTable table;
  table.add(*fifo, "a");
  EXPECT_EQ(table.report(*fifo, "a", at_iteration(1000, "loss", 1)).action, Action::kContinue);
}

TEST(SchedulerTest, DefaultChoiceTakesThePendingFirstThenThePaused) {
  auto fifo = FIFO();
  FakeTrialTable table;
  table.add(*fifo, "a").status = TrialStatus::kRunning;
  table.add(*fifo, "b").status = TrialStatus::kPaused;
  table.add(*fifo, "c").status = TrialStatus::kPaused;
  EXPECT_EQ(fifo->choose_trial_to_run(table), "b");
  table.add(*fifo, "d").status = TrialStatus::kPending;
  EXPECT_EQ(fifo->choose_trial_to_run(table), "d");
  table.at("b").status = TrialStatus::kTerminated;
  table.at("c").status = TrialStatus::kError;
  table.at("d").status = TrialStatus::kRunning;
  EXPECT_EQ(fifo->choose_trial_to_run(table), std::nullopt);
}

TEST(SchedulerTest, StatusNames) {
  EXPECT_STREQ(status_name(TrialStatus::kPending), "PENDING");
  EXPECT_STREQ(status_name(TrialStatus::kRunning), "RUNNING");
  EXPECT_STREQ(status_name(TrialStatus::kPaused), "PAUSED");
  EXPECT_STREQ(status_name(TrialStatus::kTerminated), "TERMINATED");
  EXPECT_STREQ(status_name(TrialStatus::kError), "ERROR");
}

}  // namespace
}  // namespace gantry::tune
