#include "progress_reporter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <sstream>
#include <thread>

namespace gantry::tune::detail {
namespace {

using Trial = ProgressSnapshot::Trial;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

size_t line_count(const std::string& text) { return std::count(text.begin(), text.end(), '\n'); }

// The line that starts with `prefix`, or "" when none does.
std::string line_starting(const std::string& text, const std::string& prefix) {
  for (const auto& line : lines_of(text)) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return "";
}

// The table's rows: the lines after the column titles that start with a trial id.
std::vector<std::string> row_ids(const std::string& text) {
  std::vector<std::string> ids;
  for (const auto& line : lines_of(text)) {
    if (line.rfind("t_", 0) == 0) ids.push_back(line.substr(0, line.find(' ')));
  }
  return ids;
}

Trial trial(std::string id, TrialStatus status, Json config, Json result, std::string node = "node-1") {
  return {std::move(id), status, std::move(config), std::move(result), std::move(node), ""};
}

ProgressSnapshot sample() {
  ProgressSnapshot snapshot;
  snapshot.experiment = "sweep_a";
  snapshot.path = "/tmp/results/sweep_a";
  snapshot.metric = "loss";
  snapshot.mode = kMin;
  snapshot.elapsed_s = 3725;
  snapshot.resources = "2/8 CPU, 1/2 GPU";
  auto result = [](double loss, int iteration, double acc) {
    return Json{{"loss", loss}, {"training_iteration", iteration}, {"time_total_s", iteration * 1.5}, {"acc", acc}};
  };
  snapshot.trials = {
      trial("t_00000", TrialStatus::kTerminated, {{"lr", 0.000123456}, {"layers", 2}, {"opt", {{"name", "adam"}}}},
            result(0.25, 10, 0.9)),
      trial("t_00001", TrialStatus::kRunning, {{"lr", 0.01}, {"layers", 2}, {"opt", {{"name", "sgd"}}}},
            result(0.125, 4, 0.8)),
      trial("t_00002", TrialStatus::kError, {{"lr", 0.1}, {"layers", 2}, {"opt", {{"name", "adam"}}}},
            result(0.75, 2, 0.5)),
      trial("t_00003", TrialStatus::kRunning, {{"lr", 0.05}, {"layers", 2}, {"opt", {{"name", "adam"}}}},
            result(0.5, 3, 0.95)),
      trial("t_00004", TrialStatus::kPending, {{"lr", 0.2}, {"layers", 2}, {"opt", {{"name", "sgd"}}}}, nullptr, ""),
  };
  snapshot.trials[2].error = "std::runtime_error: diverged\n(on node-1)";
  return snapshot;
}

TEST(ProgressReporterRenderTest, HeaderCountsAndBest) {
  std::string text = ProgressReporter::render(sample(), 20, 200);
  auto lines = lines_of(text);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0], "== Status == sweep_a | elapsed 1:02:05 | 2/8 CPU, 1/2 GPU");
  EXPECT_EQ(line_starting(text, "Trials:"), "Trials: 5 (2 RUNNING, 1 PENDING, 1 TERMINATED, 1 ERROR)");
  EXPECT_EQ(line_starting(text, "Best trial:"),
            "Best trial: t_00001 with loss=0.125 and config {layers=2, lr=0.01, opt/name=sgd}");
  EXPECT_NE(text.find("Result path: /tmp/results/sweep_a"), std::string::npos);
  EXPECT_EQ(line_starting(text, "  t_00002:"), "  t_00002: std::runtime_error: diverged (on node-1)");
}

TEST(ProgressReporterRenderTest, BestRespectsModeAndNeedsTheMetric) {
  auto snapshot = sample();
  snapshot.mode = kMax;
  EXPECT_EQ(line_starting(ProgressReporter::render(snapshot, 20, 200), "Best trial:"),
            "Best trial: t_00002 with loss=0.75 and config {layers=2, lr=0.1, opt/name=adam}");
  snapshot.metric = "acc";
  EXPECT_NE(line_starting(ProgressReporter::render(snapshot, 20, 200), "Best trial: t_00003 with acc=0.95"), "");
  snapshot.metric = "nobody_reports_this";
  EXPECT_EQ(line_starting(ProgressReporter::render(snapshot, 20, 200), "Best trial:"), "");
  snapshot.metric = "";
  EXPECT_EQ(line_starting(ProgressReporter::render(snapshot, 20, 200), "Best trial:"), "");
}

TEST(ProgressReporterRenderTest, TableShowsVaryingConfigAndMetrics) {
  std::string text = ProgressReporter::render(sample(), 20, 200);
  std::string titles = line_starting(text, "Trial id");
  ASSERT_NE(titles, "");
  auto has_column = [&](const std::string& name) {
    return (" " + titles + " ").find(" " + name + " ") != std::string::npos;
  };
  for (const char* name : {"Status", "Node", "lr", "opt/name", "loss", "iter", "total", "acc"}) {
    EXPECT_TRUE(has_column(name)) << name << " in: " << titles;
  }
  // Every trial has layers=2: not a column.
  EXPECT_FALSE(has_column("layers")) << titles;
  // Short numbers: %.4g.
  std::string row = line_starting(text, "t_00000");
  EXPECT_NE(row.find("0.0001235"), std::string::npos) << row;
  EXPECT_EQ(row.find("0.000123456"), std::string::npos) << row;
  EXPECT_NE(row.find("TERMINATED"), std::string::npos) << row;
  // Columns line up: each title starts where its values do.
  EXPECT_EQ(titles.find("lr"), line_starting(text, "t_00001").find("0.01"));
}

TEST(ProgressReporterRenderTest, RunningFirstThenCreationOrderAndMaxRows) {
  std::string text = ProgressReporter::render(sample(), 20, 200);
  EXPECT_EQ(row_ids(text), (std::vector<std::string>{"t_00001", "t_00003", "t_00000", "t_00002", "t_00004"}));
  EXPECT_EQ(line_starting(text, "..."), "");

  text = ProgressReporter::render(sample(), 3, 200);
  EXPECT_EQ(row_ids(text), (std::vector<std::string>{"t_00001", "t_00003", "t_00000"}));
  EXPECT_EQ(line_starting(text, "..."), "... 2 more trials");
}

TEST(ProgressReporterRenderTest, LinesFitTheWidth) {
  auto snapshot = sample();
  snapshot.trials[0].config["a_very_long_parameter_name_that_varies"] = "with a long value as well";
  for (size_t width : {40, 60, 80}) {
    for (const auto& line : lines_of(ProgressReporter::render(snapshot, 20, width))) {
      EXPECT_LE(line.size(), width) << line;
    }
  }
  // Extra metric columns (acc) are only added where they fit whole.
  std::string narrow = line_starting(ProgressReporter::render(sample(), 20, 60), "Trial id");
  EXPECT_EQ(narrow.find("acc"), std::string::npos) << narrow;
}

TEST(ProgressReporterTest, TerminalRedrawsInPlace) {
  std::ostringstream out;
  ProgressReporter reporter(out, /*terminal=*/true, /*verbose=*/1);
  reporter.update(sample());
  std::string first = out.str();
  EXPECT_EQ(first.find("\x1b["), std::string::npos);
  size_t drawn = line_count(first);
  ASSERT_GT(drawn, 3u);

  out.str("");
  reporter.update(sample());
  std::string second = out.str();
  std::string clear = "\x1b[" + std::to_string(drawn) + "A\x1b[J";
  ASSERT_EQ(second.substr(0, clear.size()), clear);
  EXPECT_EQ(second.substr(clear.size()), first);
}

TEST(ProgressReporterTest, TerminalLinesGoAboveTheTable) {
  std::ostringstream out;
  ProgressReporter reporter(out, true, 2);
  reporter.update(sample());
  size_t drawn = line_count(out.str());
  out.str("");
  reporter.line(2, "Trial t_00005 started");
  EXPECT_EQ(out.str(), "\x1b[" + std::to_string(drawn) + "A\x1b[JTrial t_00005 started\n");
  out.str("");
  // The table was cleared: the next update draws without moving up.
  reporter.update(sample());
  EXPECT_EQ(out.str().find("\x1b["), std::string::npos);
  EXPECT_EQ(out.str().rfind("== Status ==", 0), 0u);
}

TEST(ProgressReporterTest, PlainModePrintsAtMostEveryInterval) {
  std::ostringstream out;
  ProgressReporter reporter(out, /*terminal=*/false, 1, std::chrono::hours(1));
  reporter.update(sample());
  std::string first = out.str();
  EXPECT_NE(first.find("== Status =="), std::string::npos);
  EXPECT_EQ(first.find("\x1b["), std::string::npos);
  reporter.update(sample());
  EXPECT_EQ(out.str(), first);
  reporter.update(sample(), /*force=*/true);
  EXPECT_EQ(out.str(), first + first);

  // Once the interval has passed, the next update prints again.
  std::ostringstream fast;
  ProgressReporter often(fast, false, 1, std::chrono::milliseconds(20));
  often.update(sample());
  size_t once = fast.str().size();
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  often.update(sample());
  EXPECT_EQ(fast.str().size(), 2 * once);
}

TEST(ProgressReporterTest, LinesRespectTheirLevel) {
  std::ostringstream out;
  ProgressReporter reporter(out, false, 1);
  reporter.line(2, "not at verbose 1");
  reporter.line(1, "shown");
  EXPECT_EQ(out.str(), "shown\n");
}

TEST(ProgressReporterTest, VerboseZeroPrintsNothing) {
  for (bool terminal : {true, false}) {
    std::ostringstream out;
    ProgressReporter reporter(out, terminal, 0);
    reporter.update(sample(), true);
    reporter.line(0, "event");
    reporter.line(1, "event");
    reporter.finish(sample());
    EXPECT_EQ(out.str(), "");
  }
}

TEST(ProgressReporterTest, FinishPrintsEveryTrialAsPlainLines) {
  auto snapshot = sample();
  for (int i = 5; i < 40; ++i) {
    char id[16];
    std::snprintf(id, sizeof(id), "t_%05d", i);
    snapshot.trials.push_back(trial(id, TrialStatus::kTerminated, {{"lr", i * 0.001}}, {{"loss", 1.0}}));
  }
  std::ostringstream out;
  ProgressReporter reporter(out, true, 1);
  reporter.update(snapshot);
  size_t drawn = line_count(out.str());
  out.str("");
  reporter.finish(snapshot);
  std::string clear = "\x1b[" + std::to_string(drawn) + "A\x1b[J";
  ASSERT_EQ(out.str().substr(0, clear.size()), clear);
  std::string table = out.str().substr(clear.size());
  EXPECT_EQ(table.find("\x1b["), std::string::npos);
  EXPECT_EQ(row_ids(table).size(), 40u);
  EXPECT_EQ(line_starting(table, "..."), "");
}

}  // namespace
}  // namespace gantry::tune::detail
