#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fake_trial_table.h"
#include "gantry/errors.h"
#include "gantry/tune/scheduler.h"

namespace gantry::tune {
namespace {

using test::FakeTrialTable;
using Action = Decision::Action;

Json at_time(double time, double loss) { return {{"time_total_s", time}, {"loss", loss}}; }

std::shared_ptr<TrialScheduler> median_stopping(MedianStoppingOptions options, Mode mode = kMin) {
  auto scheduler = MedianStopping(std::move(options));
  scheduler->setup("loss", mode);
  return scheduler;
}

// "a" and "b" ran to time 20; before grace_period (10) their values do not count, so at
// time 20 "a" averages (1 + 3) / 2 = 2 and "b" (1 + 2) / 2 = 1.5; at time 10 both 1.
void run_two_references(TrialScheduler& scheduler, FakeTrialTable& table) {
  table.add(scheduler, "a");
  table.add(scheduler, "b");
  table.start_all();
  for (auto [time, a, b] : {std::tuple{0.0, 50.0, 50.0}, {10.0, 1.0, 1.0}, {20.0, 3.0, 2.0}}) {
    EXPECT_EQ(table.report(scheduler, "a", at_time(time, a)).action, Action::kContinue);
    EXPECT_EQ(table.report(scheduler, "b", at_time(time, b)).action, Action::kContinue);
  }
}

TEST(MedianStoppingTest, StopsATrialWorseThanTheMedianOfTheOthersRunningAverages) {
  auto scheduler = median_stopping({.grace_period = 10, .min_samples_required = 2});
  FakeTrialTable table;
  run_two_references(*scheduler, table);

  table.add(*scheduler, "c");
  EXPECT_EQ(table.report(*scheduler, "c", at_time(5, 9.0)).action, Action::kContinue) << "before grace_period";
  // At time 10 the others average 1 and 1; c's best, 3, is worse.
  Decision c = table.report(*scheduler, "c", at_time(10, 3.0));
  EXPECT_EQ(c.action, Action::kStop);
  EXPECT_NE(c.reason.find("best loss 3 is worse than the median 1 of 2 other trials"), std::string::npos) << c.reason;

  // At time 20 the median of 2 and 1.5 is 1.75: a best of 1.7 goes on...
  table.add(*scheduler, "d");
  EXPECT_EQ(table.report(*scheduler, "d", at_time(5, 9.0)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "d", at_time(20, 1.7)).action, Action::kContinue);
  // ...and "d" now counts too: the median of 2, 1.5 and 1.7 is 1.7, and 1.8 is worse.
  table.add(*scheduler, "e");
  Decision e = table.report(*scheduler, "e", at_time(20, 1.8));
  EXPECT_EQ(e.action, Action::kStop);
  EXPECT_NE(e.reason.find("median 1.7 of 3 other"), std::string::npos) << e.reason;
}

TEST(MedianStoppingTest, NothingIsStoppedBeforeTheGracePeriod) {
  auto scheduler = median_stopping({.grace_period = 10, .min_samples_required = 2});
  FakeTrialTable table;
  run_two_references(*scheduler, table);
  table.add(*scheduler, "c");
  for (double time : {0.0, 3.0, 9.99}) {
    EXPECT_EQ(table.report(*scheduler, "c", at_time(time, 1000.0)).action, Action::kContinue) << time;
  }
  EXPECT_EQ(table.report(*scheduler, "c", at_time(10, 1000.0)).action, Action::kStop);
}

TEST(MedianStoppingTest, MaximisesWhenAskedTo) {
  auto scheduler = MedianStopping({.metric = "accuracy", .mode = kMax, .grace_period = 0, .min_samples_required = 2});
  scheduler->setup("loss", kMin);
  FakeTrialTable table;
  for (const char* id : {"a", "b", "c", "d"}) table.add(*scheduler, id);
  for (const char* id : {"a", "b", "c", "d"}) table.at(id).status = TrialStatus::kRunning;
  EXPECT_EQ(table.report(*scheduler, "a", {{"time_total_s", 1}, {"accuracy", 0.8}}).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "b", {{"time_total_s", 1}, {"accuracy", 0.6}}).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "c", {{"time_total_s", 1}, {"accuracy", 0.75}}).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "d", {{"time_total_s", 1}, {"accuracy", 0.65}}).action, Action::kStop);
}

TEST(MedianStoppingTest, OnlyTrialsThatGotAsFarCount) {
  auto scheduler = median_stopping({.grace_period = 10, .min_samples_required = 2});
  FakeTrialTable table;
  run_two_references(*scheduler, table);
  table.add(*scheduler, "c");
  // Nobody else reached time 30: too few samples, and nobody waits, so it goes on.
  EXPECT_EQ(table.report(*scheduler, "c", at_time(30, 1000.0)).action, Action::kContinue);
}

TEST(MedianStoppingTest, YieldsToWaitingTrialsWhenSamplesAreTooFewAtMostOncePerTimeSlice) {
  auto scheduler = median_stopping({.grace_period = 10, .min_samples_required = 3, .min_time_slice = 10});
  FakeTrialTable table;
  run_two_references(*scheduler, table);
  table.add(*scheduler, "c");
  table.add(*scheduler, "waiting");
  Decision yielded = table.report(*scheduler, "c", at_time(20, 1000.0));
  EXPECT_EQ(yielded.action, Action::kPause);
  EXPECT_NE(yielded.reason.find("yields to waiting trials"), std::string::npos) << yielded.reason;
  // Resumed, it runs at least min_time_slice before it yields again.
  EXPECT_EQ(table.report(*scheduler, "c", at_time(25, 1000.0)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "c", at_time(30, 1000.0)).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "c", at_time(31, 1000.0)).action, Action::kPause);
  table.at("waiting").status = TrialStatus::kTerminated;
  EXPECT_EQ(table.report(*scheduler, "c", at_time(50, 1000.0)).action, Action::kContinue);
}

TEST(MedianStoppingTest, WithoutHardStopItPausesAndThenLetsTheTrialRun) {
  auto scheduler = median_stopping({.grace_period = 10, .min_samples_required = 2, .hard_stop = false});
  FakeTrialTable table;
  run_two_references(*scheduler, table);
  table.add(*scheduler, "c");
  EXPECT_EQ(table.report(*scheduler, "c", at_time(10, 3.0)).action, Action::kPause);
  // Resumed (nothing else waits), it is not judged again.
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "c");
  EXPECT_EQ(table.report(*scheduler, "c", at_time(20, 500.0)).action, Action::kContinue);
}

TEST(MedianStoppingTest, ResultsWithoutTheMetricOrTimeContinue) {
  auto scheduler = median_stopping({.grace_period = 0, .min_samples_required = 1});
  FakeTrialTable table;
  run_two_references(*scheduler, table);
  table.add(*scheduler, "c");
  EXPECT_EQ(table.report(*scheduler, "c", {{"time_total_s", 20}}).action, Action::kContinue);
  EXPECT_EQ(table.report(*scheduler, "c", {{"loss", 1e9}}).action, Action::kContinue);
}

TEST(MedianStoppingTest, RejectsInvalidOptionsAndNeedsAMetric) {
  EXPECT_THROW(MedianStopping({.grace_period = -1}), Error);
  EXPECT_THROW(MedianStopping({.min_samples_required = 0}), Error);
  EXPECT_THROW(MedianStopping({.min_time_slice = -1}), Error);
  EXPECT_THROW(MedianStopping()->setup("", kMax), Error);
}

TEST(MedianStoppingTest, SpecRebuildsAnEqualScheduler) {
  auto original = MedianStopping({.time_attr = "training_iteration",
                                  .grace_period = 5,
                                  .min_samples_required = 4,
                                  .min_time_slice = 2,
                                  .hard_stop = false});
  const Json spec = original->spec();
  EXPECT_EQ(spec["name"], "median_stopping");
  auto rebuilt = make_scheduler(spec);
  EXPECT_EQ(rebuilt->name(), "median_stopping");
  EXPECT_EQ(rebuilt->spec(), spec);
  EXPECT_EQ(spec["hard_stop"], false);
  EXPECT_TRUE(spec["mode"].is_null());
}

}  // namespace
}  // namespace gantry::tune
