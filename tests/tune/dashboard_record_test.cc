// A sweep's dashboard record without a cluster: events applied by hand to the trial
// table, the record's writes landing in a fake sink. When a record is written in general
// (a slow write, a failed one): tests/config/published_record_test.cc.

#include "dashboard_record.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "experiment_log.h"
#include "gantry/errors.h"
#include "gantry/tune/tuner.h"
#include "support/fake_record_store.h"

namespace gantry::tune::detail {
namespace {

using FakeStore = gantry::test_support::FakeRecordStore;

DashboardRecord::Experiment experiment(const std::string& name, const std::string& metric = "loss", Mode mode = kMin) {
  return {.name = name,
          .path = "/exp/" + name,
          .job_id = "01000000",
          .metric = metric,
          .mode = mode,
          .searcher = "random",
          .scheduler = "asha"};
}

// A trial table and its record, fed the same events as the Tuner's driver feeds them.
struct Sweep {
  ExperimentState state;
  FakeStore store;
  DashboardRecord record;
  explicit Sweep(DashboardRecord::Experiment e) : record(std::move(e), state, store.sink()) {}

  void event(Json e) {
    state.apply(e);
    record.on_event(e);
  }
  void trial(const std::string& id, Json config) {
    event({{"event", "trial"}, {"id", id}, {"config", std::move(config)}});
    event({{"event", "start"}, {"id", id}, {"iteration", 0}});
  }
  void result(const std::string& id, int iteration, double loss) {
    event({{"event", "result"}, {"id", id}, {"result", {{"loss", loss}, {"training_iteration", iteration}}}});
  }
  void end(const std::string& id, const std::string& status, const std::string& error = "") {
    Json e = {{"event", "end"}, {"id", id}, {"status", status}, {"how", "finished"}};
    if (!error.empty()) e["error"] = error;
    event(std::move(e));
  }
  Json written() { return store.read(record.key()); }
};

const Json& trial_of(const Json& record, const std::string& id) {
  for (const Json& t : record["trials"])
    if (t["trial_id"] == id) return t;
  throw Error("no trial " + id + " in " + record.dump());
}

}  // namespace

TEST(TuneDashboardRecord, HoldsCountsTheBestAndEachTrialsHistory) {
  Sweep s(experiment("exp"));
  EXPECT_EQ(s.record.key(), "gantry.dashboard/tune/exp");
  s.trial("a", {{"lr", 0.1}});
  s.trial("b", {{"lr", 0.2}});
  s.trial("c", {{"lr", 0.3}});
  s.event({{"event", "trial"}, {"id", "d"}, {"config", {{"lr", 0.4}}}});  // never starts
  // a: best ever 0.1 but last 0.5; b: last 0.3, the best by last results (as ResultGrid).
  s.result("a", 1, 0.9);
  s.result("a", 2, 0.1);
  s.result("a", 3, 0.5);
  s.result("b", 1, 0.4);
  s.result("b", 2, 0.3);
  s.result("c", 1, std::nan(""));
  s.end("a", "TERMINATED");
  s.end("c", "ERROR", "ValueError: diverged");
  s.record.set_state("running");
  Json j = s.written();
  EXPECT_EQ(j["kind"], "tune");
  EXPECT_EQ(j["name"], "exp");
  EXPECT_EQ(j["path"], "/exp/exp");
  EXPECT_EQ(j["state"], "running");
  EXPECT_EQ(j["job_id"], "01000000");
  EXPECT_EQ(j["metric"], "loss");
  EXPECT_EQ(j["mode"], "min");
  EXPECT_EQ(j["searcher"], "random");
  EXPECT_EQ(j["scheduler"], "asha");
  EXPECT_EQ(j["counts"], (Json{{"PENDING", 1}, {"RUNNING", 1}, {"PAUSED", 0}, {"TERMINATED", 1}, {"ERROR", 1}}));
  EXPECT_EQ(j["best"]["trial_id"], "b");
  EXPECT_DOUBLE_EQ(j["best"]["value"].get<double>(), 0.3);
  EXPECT_EQ(j["best"]["config"]["lr"], 0.2);
  ASSERT_EQ(j["trials"].size(), 4u);
  const Json& a = trial_of(j, "a");
  EXPECT_EQ(a["status"], "TERMINATED");
  EXPECT_EQ(a["iterations"], 3);
  EXPECT_DOUBLE_EQ(a["last"]["loss"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(a["best"].get<double>(), 0.1);
  EXPECT_EQ(a["history"], Json::parse("[[1, 0.9], [2, 0.1], [3, 0.5]]"));
  EXPECT_TRUE(a["error"].is_null());
  EXPECT_TRUE(a["node_id"].is_null());
  const Json& c = trial_of(j, "c");
  EXPECT_EQ(c["error"], "ValueError: diverged");
  EXPECT_TRUE(c["best"].is_null()) << "a NaN is never a best";
  EXPECT_EQ(c["history"], Json::parse("[[1, null]]"));
  const Json& d = trial_of(j, "d");
  EXPECT_EQ(d["status"], "PENDING");
  EXPECT_TRUE(d["history"].empty());
  EXPECT_TRUE(d["last"].is_null());
}

TEST(TuneDashboardRecord, AMaxSweepAndOneWithoutAMetric) {
  Sweep max(experiment("max", "loss", kMax));
  max.trial("a", {});
  max.trial("b", {});
  max.result("a", 1, 2);
  max.result("b", 1, 3);
  max.record.set_state("finished");
  EXPECT_EQ(max.written()["best"]["trial_id"], "b");
  EXPECT_EQ(max.written()["mode"], "max");

  Sweep none(experiment("none", ""));
  none.trial("a", {});
  none.result("a", 1, 2);
  none.record.set_state("finished");
  Json j = none.written();
  EXPECT_TRUE(j["metric"].is_null());
  EXPECT_TRUE(j["best"].is_null());
  EXPECT_TRUE(j["trials"][0]["history"].empty());
  EXPECT_EQ(j["trials"][0]["iterations"], 1);
}

TEST(TuneDashboardRecord, HistoryIsThinnedEvenlyAndARestartFromScratchClearsIt) {
  Sweep s(experiment("long"));
  s.trial("a", {});
  for (int i = 1; i <= 1000; ++i) s.result("a", i, 1000 - i);
  s.record.set_node_id("a", "0123abcd");
  s.record.set_state("running");
  Json a = s.written()["trials"][0];
  EXPECT_EQ(a["node_id"], "0123abcd");
  const Json& h = a["history"];
  ASSERT_LE(h.size(), DashboardRecord::kMaxHistory);
  ASSERT_GE(h.size(), DashboardRecord::kMaxHistory / 2);
  EXPECT_EQ(h[0][0], 1);
  int step = h[1][0].get<int>() - h[0][0].get<int>();
  for (size_t k = 0; k < h.size(); ++k) {
    if (k > 0) {
      EXPECT_EQ(h[k][0].get<int>() - h[k - 1][0].get<int>(), step) << k;
    }
    EXPECT_EQ(h[k][1].get<double>(), 1000 - h[k][0].get<int>());
  }
  EXPECT_DOUBLE_EQ(a["best"].get<double>(), 0);

  s.event({{"event", "end"}, {"id", "a"}, {"status", "PENDING"}, {"how", "restored"}, {"restart", true}});
  s.event({{"event", "start"}, {"id", "a"}});
  s.result("a", 1, 7);
  s.record.set_state("running");
  a = s.written()["trials"][0];
  EXPECT_EQ(a["history"], Json::parse("[[1, 7.0]]"));
  EXPECT_DOUBLE_EQ(a["best"].get<double>(), 7);
  EXPECT_EQ(a["node_id"], "0123abcd");
}

TEST(TuneDashboardRecord, CatchesUpWithARestoredSweepsState) {
  ExperimentState state;
  for (const Json& e :
       {Json{{"event", "trial"}, {"id", "a"}, {"config", {{"x", 1}}}}, Json{{"event", "start"}, {"id", "a"}},
        Json{{"event", "result"}, {"id", "a"}, {"result", {{"loss", 3}, {"training_iteration", 1}}}},
        Json{{"event", "result"}, {"id", "a"}, {"result", {{"loss", 2}, {"training_iteration", 2}}}}}) {
    state.apply(e);
  }
  FakeStore store;
  DashboardRecord record(experiment("restored"), state, store.sink());
  record.catch_up();
  record.set_state("running");
  Json a = store.read(record.key())["trials"][0];
  EXPECT_EQ(a["history"], Json::parse("[[1, 3.0], [2, 2.0]]"));
  EXPECT_DOUBLE_EQ(a["best"].get<double>(), 2);
  EXPECT_EQ(a["status"], "RUNNING");
}

TEST(TuneDashboardRecord, WritesAtMostOncePerIntervalButAtOnceOnAStateChange) {
  Sweep s(experiment("rate"));
  auto t0 = DashboardRecord::Clock::now();
  s.record.set_state("running");
  EXPECT_EQ(s.store.puts, 1);
  s.trial("a", {});
  s.record.publish_if_due(t0 + std::chrono::milliseconds(100));
  EXPECT_EQ(s.store.puts, 1);
  s.record.publish_if_due(t0 + std::chrono::milliseconds(1500));
  EXPECT_EQ(s.store.puts, 2);
  EXPECT_EQ(s.written()["trials"].size(), 1u);
  s.record.publish_if_due(t0 + std::chrono::seconds(3));
  EXPECT_EQ(s.store.puts, 2) << "nothing changed";
  s.record.set_node_id("a", "0123abcd");
  s.record.publish_if_due(t0 + std::chrono::seconds(5));
  EXPECT_EQ(s.store.puts, 3) << "a trial's node is a change";
  s.record.set_node_id("a", "0123abcd");
  s.record.publish_if_due(t0 + std::chrono::seconds(7));
  EXPECT_EQ(s.store.puts, 3) << "the same node again is not";
  s.record.set_state("finished");
  EXPECT_EQ(s.store.puts, 4) << "a state change is written at once";
  EXPECT_EQ(s.written()["state"], "finished");
}

TEST(TuneDashboardRecord, AWriteThatFailsNeverFailsTheSweepAndIsSaidOnceWithItsName) {
  ExperimentState state;
  int attempts = 0;
  DashboardRecord offline(experiment("offline"), state, [&](const std::string&, const std::string&) {
    ++attempts;
    throw Error("the head cannot be reached");
  });
  testing::internal::CaptureStderr();
  auto t0 = DashboardRecord::Clock::now();
  EXPECT_NO_THROW(offline.set_state("running"));
  offline.on_event({{"event", "searcher_finished"}});
  EXPECT_NO_THROW(offline.publish_if_due(t0 + std::chrono::seconds(2)));
  EXPECT_EQ(attempts, 1) << "after a failure the periodic writes wait longer";
  EXPECT_NO_THROW(offline.set_state("finished"));
  EXPECT_EQ(attempts, 2);
  std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("[tune offline]"), std::string::npos) << said;
  EXPECT_NE(said.find("gantry.dashboard/tune/offline"), std::string::npos) << said;
  EXPECT_NE(said.find("the head cannot be reached"), std::string::npos) << said;
  EXPECT_EQ(said.find("the head cannot be reached"), said.rfind("the head cannot be reached")) << said;
}

TEST(TuneDashboardRecord, AHugeSweepStaysUnderItsSize) {
  Sweep s(experiment("huge"));
  std::string padding(300, 'p');
  for (int t = 0; t < 3000; ++t) {
    std::string id = "t" + std::to_string(t);
    s.trial(id, {{"lr", 0.001 * t}, {"notes", padding}});
    for (int i = 1; i <= 30; ++i) s.result(id, i, 1.0 / i + t);
  }
  s.record.set_state("running");
  const std::string& text = s.store.values.at(s.record.key());
  EXPECT_LE(text.size(), DashboardRecord::kMaxBytes);
  Json j = Json::parse(text);
  EXPECT_EQ(j["counts"]["RUNNING"], 3000);
  EXPECT_EQ(j["best"]["trial_id"], "t0");
  EXPECT_FALSE(j["trials"].empty());
  EXPECT_EQ(j["trials"].back()["trial_id"], "t2999") << "the latest trials are kept";
  EXPECT_EQ(j["trials_omitted"].get<size_t>() + j["trials"].size(), 3000u);
}

}  // namespace gantry::tune::detail
