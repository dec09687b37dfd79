#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "gantry/errors.h"
#include "tfevents_reader.h"
#include "tfevents_writer.h"

namespace fs = std::filesystem;

namespace gantry::tune::detail {
namespace {

using test_support::ParsedEvent;
using test_support::read_events_file;
using test_support::TempDir;

constexpr const char* kTempDirPrefix = "gantry_tfevents_test_";

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  std::string ones(32, '\xff');
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c("", 0), 0u);
}

TEST(Crc32cTest, MaskedMatchesTheTfRecordFormula) {
  uint32_t crc = 0xE3069283u;
  EXPECT_EQ(masked_crc32c("123456789", 9), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST(TfEventsWriterTest, FileNameHasSecondsAndHost) {
  TempDir dir(kTempDirPrefix);
  auto before =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  TfEventsWriter writer(dir.path());
  fs::path path(writer.path());
  EXPECT_EQ(path.parent_path(), fs::path(dir.path()));
  std::smatch match;
  std::string name = path.filename().string();
  ASSERT_TRUE(std::regex_match(name, match, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+))"))) << name;
  EXPECT_GE(std::stoll(match[1]), before);
  EXPECT_EQ(match[2], host_name());
  EXPECT_TRUE(fs::exists(path));
}

TEST(TfEventsWriterTest, WritesVersionEventThenScalarsReadableWhileOpen) {
  TempDir dir(kTempDirPrefix);
  TfEventsWriter writer(dir.path());
  writer.add_scalars(1, 1000.5, {{"loss", 0.5}, {"eval/acc", 0.25}});
  writer.add_scalars(int64_t{1} << 40, 1001.25, {{"loss", 0.125}});

  // Still open: each add_scalars is flushed, so a reader sees both already.
  auto events = read_events_file(writer.path());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_FALSE(events[0].has_summary);
  EXPECT_GT(events[0].wall_time, 1.6e9);

  EXPECT_TRUE(events[1].file_version.empty());
  EXPECT_EQ(events[1].step, 1);
  EXPECT_DOUBLE_EQ(events[1].wall_time, 1000.5);
  ASSERT_EQ(events[1].values.size(), 2u);
  EXPECT_EQ(events[1].values[0].first, "loss");
  EXPECT_FLOAT_EQ(events[1].values[0].second, 0.5f);
  EXPECT_EQ(events[1].values[1].first, "eval/acc");
  EXPECT_FLOAT_EQ(events[1].values[1].second, 0.25f);

  EXPECT_EQ(events[2].step, int64_t{1} << 40);
  EXPECT_DOUBLE_EQ(events[2].wall_time, 1001.25);
  ASSERT_EQ(events[2].values.size(), 1u);
  EXPECT_EQ(events[2].values[0].first, "loss");
  EXPECT_FLOAT_EQ(events[2].values[0].second, 0.125f);
}

TEST(TfEventsWriterTest, ReopeningKeepsEarlierEventsAndOneVersionPerFile) {
  TempDir dir(kTempDirPrefix);
  { TfEventsWriter(dir.path()).add_scalars(1, 1.0, {{"x", 1}}); }
  { TfEventsWriter(dir.path()).add_scalars(2, 2.0, {{"x", 2}}); }
  // Within one second both writers share a name (and append); across a second boundary
  // there are two files. Either way nothing is lost and each file starts with its version.
  std::vector<int64_t> steps;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    auto events = read_events_file(entry.path().string());
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events[0].file_version, "brain.Event:2");
    for (size_t i = 1; i < events.size(); ++i) {
      EXPECT_TRUE(events[i].file_version.empty());
      steps.push_back(events[i].step);
    }
  }
  std::sort(steps.begin(), steps.end());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2}));
}

TEST(TfEventsWriterTest, MissingDirectoryThrowsNamingTheFile) {
  TempDir dir(kTempDirPrefix);
  std::string missing = dir.path() + "/no/such/dir";
  try {
    TfEventsWriter writer(missing);
    FAIL() << "expected gantry::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing + "/events.out.tfevents."), std::string::npos) << e.what();
  }
}

TEST(TfEventsWriterTest, FullDiskThrowsNamingTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this system";
  TempDir dir(kTempDirPrefix);
  // Whatever second the writer starts in, its file name is a link to /dev/full, whose
  // writes fail with ENOSPC.
  auto now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  for (int64_t second = now; second < now + 5; ++second) {
    fs::create_symlink("/dev/full", dir.path() + "/events.out.tfevents." + std::to_string(second) + "." + host_name());
  }
  try {
    TfEventsWriter writer(dir.path());
    writer.add_scalars(1, 1.0, {{"x", 1}});
    FAIL() << "expected gantry::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path() + "/events.out.tfevents."), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No space left"), std::string::npos) << e.what();
  }
}

// Cross-check with TensorBoard's own reader where it is installed.
TEST(TfEventsWriterTest, TensorBoardReadsTheFile) {
  if (std::system("python3 -c 'import tensorboard' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 cannot import tensorboard; the independent reader above covers the format";
  }
  TempDir dir(kTempDirPrefix);
  {
    TfEventsWriter writer(dir.path());
    writer.add_scalars(1, 1000.0, {{"loss", 0.5}, {"eval/acc", 0.25}});
    writer.add_scalars(2, 1001.0, {{"loss", 0.25}});
  }
  std::string script = dir.path() + "/read.py";
  std::string output = dir.path() + "/read.out";
  std::ofstream(script) << "import sys\n"
                           "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
                           "acc = EventAccumulator(sys.argv[1]); acc.Reload()\n"
                           "for tag in sorted(acc.Tags()['scalars']):\n"
                           "    for e in acc.Scalars(tag): print(tag, e.step, e.value)\n";
  std::string command = "python3 " + script + " " + dir.path() + " > " + output + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << std::ifstream(output).rdbuf();
  std::stringstream text;
  text << std::ifstream(output).rdbuf();
  EXPECT_EQ(text.str(), "eval/acc 1 0.25\nloss 1 0.5\nloss 2 0.25\n");
}

}  // namespace
}  // namespace gantry::tune::detail
