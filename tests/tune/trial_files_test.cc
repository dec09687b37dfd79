#include "trial_files.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>

#include "gantry/errors.h"
#include "tfevents_reader.h"

namespace fs = std::filesystem;

namespace gantry::tune::detail {
namespace {

using test_support::ParsedEvent;
using test_support::TempDir;

constexpr const char* kTempDirPrefix = "gantry_trial_files_test_";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string events_file(const std::string& directory) {
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) return entry.path().string();
  }
  return "";
}

TEST(FlattenMetricsTest, JoinsNestedKeysAndKeepsOnlyScalarLeaves) {
  Json result = {{"loss", 0.5},    {"eval", {{"acc", 0.9}, {"detail", {{"f1", 0.7}}}}},
                 {"name", "run"},  {"done", false},
                 {"list", {1, 2}}, {"nothing", nullptr},
                 {"iter", 3}};
  auto leaves = flatten_metrics(result);
  std::vector<std::string> keys;
  for (const auto& [key, value] : leaves) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"done", "eval/acc", "eval/detail/f1", "iter", "loss", "name"}));
  EXPECT_EQ(leaves[2].second, 0.7);
  EXPECT_TRUE(flatten_metrics(Json(3)).empty());
  EXPECT_TRUE(flatten_metrics(Json()).empty());
}

TEST(CsvTest, FieldsAreQuotedOnlyWhenNeeded) {
  EXPECT_EQ(csv_field("plain"), "plain");
  EXPECT_EQ(csv_field(""), "");
  EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csv_field("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(csv_field("cr\r"), "\"cr\r\"");
}

TEST(CsvTest, ValuesSpellNumbersInFullAndNonFiniteByName) {
  EXPECT_EQ(csv_value(Json(3)), "3");
  EXPECT_EQ(csv_value(Json(-7)), "-7");
  EXPECT_EQ(csv_value(Json(0.1)), "0.1");
  EXPECT_EQ(csv_value(Json(0.123456789012)), "0.123456789012");
  EXPECT_EQ(csv_value(Json(std::nan(""))), "nan");
  EXPECT_EQ(csv_value(Json(std::numeric_limits<double>::infinity())), "inf");
  EXPECT_EQ(csv_value(Json(-std::numeric_limits<double>::infinity())), "-inf");
  EXPECT_EQ(csv_value(Json(true)), "true");
  EXPECT_EQ(csv_value(Json("a,b")), "a,b");
  EXPECT_EQ(csv_value(Json()), "");
}

TEST(FindFlattenedTest, FindsNestedAndSlashedKeys) {
  Json result = {{"eval", {{"loss", 0.25}}}, {"a/b", 1}, {"top", 2}};
  ASSERT_NE(find_flattened(result, "eval/loss"), nullptr);
  EXPECT_EQ(*find_flattened(result, "eval/loss"), 0.25);
  ASSERT_NE(find_flattened(result, "a/b"), nullptr);
  EXPECT_EQ(*find_flattened(result, "a/b"), 1);
  EXPECT_EQ(*find_flattened(result, "top"), 2);
  EXPECT_EQ(find_flattened(result, "eval"), nullptr);
  EXPECT_EQ(find_flattened(result, "eval/acc"), nullptr);
  EXPECT_EQ(find_flattened(Json(), "top"), nullptr);
}

TEST(TrialFilesTest, WritesParamsAtomically) {
  TempDir dir(kTempDirPrefix);
  std::string trial = dir.path() + "/trial_0001";  // created on first use
  TrialFiles files(trial);
  Json config = {{"lr", 0.01}, {"model", {{"layers", 3}}}};
  files.write_params(config);
  EXPECT_EQ(Json::parse(read_file(trial + "/params.json")), config);
  files.write_params({{"lr", 0.02}});
  EXPECT_EQ(Json::parse(read_file(trial + "/params.json")), Json({{"lr", 0.02}}));
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(trial)) names.push_back(entry.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"params.json"});
}

TEST(TrialFilesTest, AppendsResultJsonLinesAndProgressCsv) {
  TempDir dir(kTempDirPrefix);
  TrialFiles files(dir.path());
  Json first = {{"training_iteration", 1}, {"loss", 0.5}, {"note", "a,\"b\""}, {"eval", {{"acc", 0.75}}}};
  Json second = {{"training_iteration", 2}, {"loss", 0.25}, {"extra", 9}};  // no note, eval; a new key
  files.append_result(first);
  files.append_result(second);

  auto json_lines = lines_of(read_file(dir.path() + "/result.json"));
  ASSERT_EQ(json_lines.size(), 2u);
  EXPECT_EQ(Json::parse(json_lines[0]), first);
  EXPECT_EQ(Json::parse(json_lines[1]), second);

  // Columns from the first result; missing values are empty; "extra" is not added.
  EXPECT_EQ(read_file(dir.path() + "/progress.csv"),
            "eval/acc,loss,note,training_iteration\n"
            "0.75,0.5,\"a,\"\"b\"\"\",1\n"
            ",0.25,,2\n");
}

TEST(TrialFilesTest, EachResultIsAppendedNotRewritten) {
  TempDir dir(kTempDirPrefix);
  TrialFiles files(dir.path());
  files.append_result({{"training_iteration", 1}, {"loss", 0.5}});
  std::string names[] = {"result.json", "progress.csv", fs::path(events_file(dir.path())).filename().string()};
  std::vector<std::string> before;
  for (const auto& name : names) before.push_back(read_file(dir.path() + "/" + name));

  files.append_result({{"training_iteration", 2}, {"loss", 0.25}});
  for (size_t i = 0; i < std::size(names); ++i) {
    std::string after = read_file(dir.path() + "/" + names[i]);
    EXPECT_GT(after.size(), before[i].size()) << names[i];
    EXPECT_EQ(after.substr(0, before[i].size()), before[i]) << names[i] << " changed its earlier bytes";
  }
}

TEST(TrialFilesTest, EventsHoldNumericAndBoolMetricsAtTrainingIteration) {
  TempDir dir(kTempDirPrefix);
  TrialFiles files(dir.path());
  files.append_result({{"training_iteration", 5},
                       {"timestamp", 1700000000},
                       {"loss", 0.5},
                       {"done", true},
                       {"name", "skipped"},
                       {"eval", {{"acc", 0.75}}}});
  auto events = test_support::read_events_file(events_file(dir.path()));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_EQ(events[1].step, 5);
  EXPECT_DOUBLE_EQ(events[1].wall_time, 1700000000.0);
  std::vector<std::pair<std::string, float>> expected = {
      {"done", 1.0f}, {"eval/acc", 0.75f}, {"loss", 0.5f}, {"timestamp", 1.7e9f}, {"training_iteration", 5.0f}};
  EXPECT_EQ(events[1].values, expected);
}

TEST(TrialFilesTest, EventsCountStepsAndUseNowWithoutIterationOrTimestamp) {
  TempDir dir(kTempDirPrefix);
  TrialFiles files(dir.path());
  double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  files.append_result({{"loss", 0.5}});
  files.append_result({{"loss", 0.25}});
  auto events = test_support::read_events_file(events_file(dir.path()));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[1].step, 1);
  EXPECT_EQ(events[2].step, 2);
  EXPECT_GE(events[1].wall_time, before - 1);
  EXPECT_LE(events[2].wall_time, before + 60);
}

TEST(TrialFilesTest, ReopenedTrialKeepsItsCsvColumns) {
  TempDir dir(kTempDirPrefix);
  {
    TrialFiles files(dir.path());
    files.append_result({{"b", 1}, {"a", 2}});
    files.close();
    files.append_result({{"a", 3}, {"b", 4}});
  }
  // A new TrialFiles on the same directory (the driver restarted): header from the file.
  TrialFiles again(dir.path());
  again.append_result({{"a", 5}, {"c", 6}});
  EXPECT_EQ(read_file(dir.path() + "/progress.csv"), "a,b\n2,1\n3,4\n5,\n");
  EXPECT_EQ(lines_of(read_file(dir.path() + "/result.json")).size(), 3u);
}

TEST(TrialFilesTest, FullDiskThrowsNamingTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this system";
  TempDir dir(kTempDirPrefix);
  fs::create_symlink("/dev/full", dir.path() + "/result.json");
  TrialFiles files(dir.path());
  try {
    files.append_result({{"loss", 0.5}});
    FAIL() << "expected gantry::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path() + "/result.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No space left"), std::string::npos) << e.what();
  }
}

TEST(TrialFilesTest, UnwritableDirectoryThrowsNamingIt) {
  TempDir dir(kTempDirPrefix);
  // A regular file where the trial's directory should be: no file can go under it (this
  // holds for root too, unlike permission bits).
  std::ofstream(dir.path() + "/blocker") << "x";
  std::string trial = dir.path() + "/blocker/trial";
  TrialFiles files(trial);
  EXPECT_THROW(
      {
        try {
          files.append_result({{"loss", 0.5}});
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(trial), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  EXPECT_THROW(
      {
        try {
          files.write_params({{"lr", 0.1}});
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(trial), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
}

}  // namespace
}  // namespace gantry::tune::detail
