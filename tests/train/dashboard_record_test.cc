// A Train run's dashboard record without a cluster: its shape, the thinned history, when
// it is written and a sink that fails (the record's writes land in a fake sink). When a
// record is written in general, and its thinned series: tests/config/published_record_test.cc.

#include "dashboard_record.h"

#include <gtest/gtest.h>

#include <stdexcept>

#include "gantry/errors.h"
#include "support/fake_record_store.h"

namespace train = gantry::train;
using gantry::Json;
using train::detail::DashboardRecord;

namespace {

using FakeStore = gantry::test_support::FakeRecordStore;

}  // namespace

TEST(TrainDashboardRecord, HoldsTheRunsStateMetricsHistoryAndCheckpoints) {
  FakeStore store;
  DashboardRecord record("mlp", "/runs/mlp", "0a0b", 2, false, store.sink());
  EXPECT_EQ(record.key(), "gantry.dashboard/train/mlp");
  record.set_state("starting");
  Json j = store.read("gantry.dashboard/train/mlp");
  EXPECT_EQ(j["kind"], "train");
  EXPECT_EQ(j["state"], "starting");
  EXPECT_EQ(j["iterations"], 0);
  EXPECT_TRUE(j["samples_per_second"].is_null());
  EXPECT_TRUE(j["error"].is_null());

  record.set_workers({{1, "beef", 11, {}}, {0, "cafe", 10, {0}}});
  record.set_state("running");
  for (int i = 0; i < 1200; ++i) {
    record.add_report(i + 1, {{"loss", 1000 - i}, {"epoch", i / 100}, {"note", "text"}, {"throughput", 2.5 * i}},
                      1764633600.0 + i);
  }
  record.set_checkpoints(
      {{"/runs/mlp/checkpoint_000000", 600, {{"loss", 401}}}, {"/runs/mlp/checkpoint_000001", 1200, {{"loss", -199}}}});
  record.set_state("finished");
  j = store.read(record.key());
  EXPECT_EQ(j["name"], "mlp");
  EXPECT_EQ(j["storage_path"], "/runs/mlp");
  EXPECT_EQ(j["job_id"], "0a0b");
  EXPECT_EQ(j["state"], "finished");
  EXPECT_EQ(j["num_workers"], 2);
  EXPECT_EQ(j["use_gpu"], false);
  EXPECT_EQ(j["failures"], 0);
  ASSERT_EQ(j["workers"].size(), 2u);
  EXPECT_EQ(j["workers"][1]["node_id"], "cafe");
  EXPECT_EQ(j["workers"][1]["gpu_ids"], Json::array({0}));
  EXPECT_EQ(j["iterations"], 1200);
  EXPECT_EQ(j["last_metrics"]["loss"], 1000 - 1199);
  EXPECT_EQ(j["last_metrics"]["note"], "text");
  EXPECT_EQ(j["metric_names"], Json::array({"epoch", "loss", "note", "throughput"}));
  EXPECT_DOUBLE_EQ(j["samples_per_second"].get<double>(), 2.5 * 1199);
  EXPECT_LE(j["started"].get<double>(), j["updated"].get<double>());

  // 1200 reports in at most 500 points, evenly spaced, each with what was reported then
  // (numbers only).
  const Json& history = j["history"];
  ASSERT_LE(history.size(), DashboardRecord::kMaxHistory);
  ASSERT_GE(history.size(), DashboardRecord::kMaxHistory / 2);
  EXPECT_EQ(history[0]["iteration"], 1);
  int64_t step = history[1]["iteration"].get<int64_t>() - history[0]["iteration"].get<int64_t>();
  for (size_t k = 0; k < history.size(); ++k) {
    int64_t it = history[k]["iteration"];
    if (k > 0) {
      EXPECT_EQ(it - history[k - 1]["iteration"].get<int64_t>(), step);
    }
    EXPECT_EQ(history[k]["metrics"]["loss"], 1000 - (it - 1));
    EXPECT_DOUBLE_EQ(history[k]["time"].get<double>(), 1764633600.0 + static_cast<double>(it - 1));
    EXPECT_FALSE(history[k]["metrics"].contains("note"));
  }
  ASSERT_EQ(j["checkpoints"].size(), 2u);
  EXPECT_EQ(j["checkpoints"][1]["iteration"], 1200);
  EXPECT_EQ(j["checkpoints"][1]["metrics"]["loss"], -199);
}

TEST(TrainDashboardRecord, AFailedRunCarriesItsErrorAndFailures) {
  FakeStore store;
  DashboardRecord record("broken", "/runs/broken", "", 2, true, store.sink());
  record.set_state("running");
  record.add_failure();
  record.set_state("restarting");
  record.add_failure();
  record.set_state("failed", "rank 1 is broken on purpose");
  Json j = store.read(record.key());
  EXPECT_EQ(j["state"], "failed");
  EXPECT_EQ(j["failures"], 2);
  EXPECT_EQ(j["error"], "rank 1 is broken on purpose");
  EXPECT_TRUE(j["job_id"].is_null());
  EXPECT_EQ(j["use_gpu"], true);
}

TEST(TrainDashboardRecord, WritesAtMostOncePerIntervalButAtOnceOnAStateChange) {
  FakeStore store;
  DashboardRecord record("rate", "/runs/rate", "", 1, false, store.sink());
  auto t0 = DashboardRecord::Clock::now();
  record.set_state("running");
  EXPECT_EQ(store.puts, 1);
  record.add_report(1, {{"loss", 1}}, 1.0);
  record.publish_if_due(t0 + std::chrono::milliseconds(10));
  EXPECT_EQ(store.puts, 1) << "within the interval of the last write";
  record.publish_if_due(t0 + std::chrono::milliseconds(1500));
  EXPECT_EQ(store.puts, 2);
  EXPECT_EQ(store.read(record.key())["iterations"], 1);
  record.publish_if_due(t0 + std::chrono::seconds(5));
  EXPECT_EQ(store.puts, 2) << "nothing changed: nothing to write";
  record.add_report(2, {{"loss", 1}}, 2.0);
  record.set_state("finished");
  EXPECT_EQ(store.puts, 3) << "a state change is written at once";
  EXPECT_EQ(store.read(record.key())["iterations"], 2);
}

TEST(TrainDashboardRecord, AWriteThatFailsNeverFailsTheRunAndIsSaidOnceWithItsName) {
  int attempts = 0;
  DashboardRecord record("offline", "/runs/offline", "", 1, false, [&](const std::string&, const std::string&) {
    ++attempts;
    throw gantry::Error("the head cannot be reached");
  });
  testing::internal::CaptureStderr();
  auto t0 = DashboardRecord::Clock::now();
  EXPECT_NO_THROW(record.set_state("running"));
  record.add_report(1, {{"loss", 1}}, 1.0);
  EXPECT_NO_THROW(record.publish_if_due(t0 + std::chrono::seconds(2)));
  EXPECT_EQ(attempts, 1) << "after a failure the periodic writes wait longer";
  EXPECT_NO_THROW(record.publish_if_due(t0 + gantry::RecordPublisher::kRetryAfterFailure + std::chrono::seconds(1)));
  EXPECT_EQ(attempts, 2);
  EXPECT_NO_THROW(record.set_state("finished"));
  EXPECT_EQ(attempts, 3) << "the final state is tried whatever happened before";
  std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("[train offline]"), std::string::npos) << said;
  EXPECT_NE(said.find("gantry.dashboard/train/offline"), std::string::npos) << said;
  EXPECT_NE(said.find("the head cannot be reached"), std::string::npos) << said;
  EXPECT_EQ(said.find("the head cannot be reached"), said.rfind("the head cannot be reached")) << said;
}

TEST(TrainDashboardRecord, StaysUnderItsSizeWithLargeMetrics) {
  FakeStore store;
  DashboardRecord record("large", "/runs/large", "", 1, false, store.sink());
  Json metrics = Json::object();
  for (int m = 0; m < 300; ++m) metrics["metric_with_a_long_name_" + std::to_string(m)] = m * 0.123456789;
  for (int i = 0; i < 2000; ++i) record.add_report(i + 1, metrics, 1.0 * i);
  record.set_state("finished");
  const std::string& text = store.values.at(record.key());
  EXPECT_LE(text.size(), DashboardRecord::kMaxBytes);
  Json j = Json::parse(text);
  EXPECT_EQ(j["iterations"], 2000);
  EXPECT_EQ(j["metric_names"].size(), DashboardRecord::kMaxMetricNames);
  EXPECT_FALSE(j["history"].empty()) << "fewer history points, not none";
}
