#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>

#include "gantry/errors.h"
#include "gantry/tune/tuner.h"

namespace fs = std::filesystem;

namespace gantry::tune {
namespace {

Result make_result(std::string id, TrialStatus status, Json config, std::vector<Json> history,
                   std::optional<std::string> error = std::nullopt) {
  Result result;
  result.trial_id = std::move(id);
  result.status = status;
  result.config = std::move(config);
  result.metrics = history.empty() ? Json() : history.back();
  result.metrics_history = std::move(history);
  result.path = "/exp/" + result.trial_id;
  result.error = std::move(error);
  return result;
}

// Loss by trial, last (all): a 0.5 (best 0.1, worst 0.9), b 0.3 (0.3..0.4), c none, d 0.7.
ResultGrid sample(std::string metric = "loss", Mode mode = kMin) {
  std::vector<Result> results = {
      make_result("a", TrialStatus::kTerminated, {{"lr", 0.1}},
                  {{{"loss", 0.9}}, {{"loss", 0.1}}, {{"loss", 0.5}, {"eval", {{"acc", 0.6}}}}}),
      make_result("b", TrialStatus::kTerminated, {{"lr", 0.2}},
                  {{{"loss", 0.4}}, {{"loss", 0.3}, {"eval", {{"acc", 0.8}}}}}),
      make_result("c", TrialStatus::kError, {{"lr", 0.3}}, {{{"other", 1}}}, "std::runtime_error: boom"),
      make_result("d", TrialStatus::kRunning, {{"lr", 0.4}}, {{{"loss", 0.7}}}),
  };
  return ResultGrid(std::move(results), std::move(metric), mode, "/exp");
}

std::string what_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no gantry::Error thrown)";
}

TEST(ResultGridTest, BestResultByLastResult) {
  auto grid = sample();
  EXPECT_EQ(grid.best_result().trial_id, "b");
  EXPECT_EQ(grid.best_result("loss", kMax).trial_id, "d");
  EXPECT_EQ(grid.best_result("", kMax).trial_id, "d");
  EXPECT_EQ(sample("loss", kMax).best_result().trial_id, "d");
  // Another metric, nested, with the grid's mode unless given.
  EXPECT_EQ(grid.best_result("eval/acc").trial_id, "a");
  EXPECT_EQ(grid.best_result("eval/acc", kMax).trial_id, "b");
}

TEST(ResultGridTest, BestResultOverAllResults) {
  auto grid = sample();
  EXPECT_EQ(grid.best_result("loss", kMin, "all").trial_id, "a");  // 0.1 at its second result
  EXPECT_EQ(grid.best_result("loss", kMax, "all").trial_id, "a");  // 0.9 at its first
  EXPECT_EQ(grid.best_result("", std::nullopt, "all").trial_id, "a");
  // Without the outlier trial, "all" still picks each trial's best: b's 0.3 beats d's 0.7.
  std::vector<Result> two = {grid[1], grid[3]};
  EXPECT_EQ(ResultGrid(two, "loss", kMin, "").best_result("", std::nullopt, "all").trial_id, "b");
}

TEST(ResultGridTest, BestResultErrorsNameTheMetric) {
  auto grid = sample();
  std::string message = what_of([&] { grid.best_result("accuracy"); });
  EXPECT_NE(message.find("'accuracy'"), std::string::npos) << message;
  message = what_of([&] { sample("").best_result(); });
  EXPECT_NE(message.find("no metric"), std::string::npos) << message;
  message = what_of([&] { grid.best_result("loss", kMin, "avg"); });
  EXPECT_NE(message.find("\"avg\""), std::string::npos) << message;
  EXPECT_NE(what_of([&] { ResultGrid().best_result("loss"); }).find("'loss'"), std::string::npos);
}

TEST(ResultGridTest, ErrorsAndCounts) {
  auto grid = sample();
  ASSERT_EQ(grid.size(), 4u);
  auto failed = grid.errors();
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0]->trial_id, "c");
  EXPECT_EQ(failed[0]->error, "std::runtime_error: boom");
  EXPECT_EQ(grid.num_errors(), 1u);
  EXPECT_EQ(grid.num_terminated(), 2u);
  EXPECT_EQ(grid.experiment_path(), "/exp");
}

TEST(ResultGridTest, CsvHasUnionOfColumnsInFirstSeenOrder) {
  EXPECT_EQ(sample().to_csv(),
            "trial_id,status,path,config/lr,eval/acc,loss,other,error\n"
            "a,TERMINATED,/exp/a,0.1,0.6,0.5,,\n"
            "b,TERMINATED,/exp/b,0.2,0.8,0.3,,\n"
            "c,ERROR,/exp/c,0.3,,,1,std::runtime_error: boom\n"
            "d,RUNNING,/exp/d,0.4,,0.7,,\n");
}

TEST(ResultGridTest, CsvQuotesAndKeepsConfigOverEchoedConfig) {
  std::vector<Result> results = {make_result("x,1", TrialStatus::kError, {{"opt", {{"name", "a\"b"}}}},
                                             {{{"note", "line\nbreak"}, {"config", {{"opt", {{"name", "echoed"}}}}}}},
                                             "ValueError: bad \"lr\", too big")};
  EXPECT_EQ(ResultGrid(results, "loss", kMin, "").to_csv(),
            "trial_id,status,path,config/opt/name,note,error\n"
            "\"x,1\",ERROR,\"/exp/x,1\",\"a\"\"b\",\"line\nbreak\",\"ValueError: bad \"\"lr\"\", too big\"\n");
  EXPECT_EQ(ResultGrid().to_csv(), "trial_id,status,path,error\n");
}

TEST(ResultGridTest, CsvFileIsWrittenWhole) {
  std::random_device seed;
  fs::path dir = fs::temp_directory_path() / ("gantry_result_grid_test_" + std::to_string(seed()));
  fs::create_directories(dir);
  auto grid = sample();
  std::string file = (dir / "results.csv").string();
  std::ofstream(file) << "old contents that are longer than nothing\n";
  grid.to_csv(file);
  std::ifstream in(file, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()), grid.to_csv());
  size_t entries = std::distance(fs::directory_iterator(dir), fs::directory_iterator());
  EXPECT_EQ(entries, 1u);  // no temporary left behind

  std::string unwritable = (dir / "missing" / "results.csv").string();
  std::string message = what_of([&] { grid.to_csv(unwritable); });
  EXPECT_NE(message.find(unwritable), std::string::npos) << message;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace gantry::tune
