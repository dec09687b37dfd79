// The command line of `gantry train launch`: flags, defaults, usage errors, program lookup.

#include "launch_options.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace gantry::train::launch {
namespace {

ParsedCommandLine parse(std::vector<std::string> args) {
  args.insert(args.begin(), "gantry-train");
  return parse_command_line(args);
}

TEST(LaunchOptionsTest, ReadsEveryFlagAndThePassedThroughCommand) {
  ParsedCommandLine p = parse({"launch",
                               "--workers",
                               "8",
                               "--gpus-per-worker",
                               "1",
                               "--cpus-per-worker",
                               "4",
                               "--min-workers",
                               "4",
                               "--max-restarts",
                               "3",
                               "--placement",
                               "strict-spread",
                               "--address",
                               "10.0.0.5:6380",
                               "--temp-dir",
                               "/tmp/t",
                               "--name",
                               "mlp",
                               "--env",
                               "A=1",
                               "--env",
                               "B=x=y",
                               "--",
                               "./train",
                               "--lr",
                               "0.1",
                               "--workers",
                               "2"});
  ASSERT_TRUE(p.options.has_value()) << p.message;
  const LaunchOptions& o = *p.options;
  EXPECT_EQ(o.workers, 8);
  EXPECT_EQ(o.min_workers, 4);
  EXPECT_EQ(o.cpus_per_worker, 4);
  EXPECT_EQ(o.gpus_per_worker, 1);
  EXPECT_EQ(o.max_restarts, 3);
  EXPECT_EQ(o.placement, PlacementStrategy::kStrictSpread);
  EXPECT_EQ(o.address, "10.0.0.5:6380");
  EXPECT_EQ(o.temp_dir, "/tmp/t");
  EXPECT_EQ(o.name, "mlp");
  ASSERT_EQ(o.env.size(), 2u);
  EXPECT_EQ(o.env[0], std::make_pair(std::string("A"), std::string("1")));
  EXPECT_EQ(o.env[1], std::make_pair(std::string("B"), std::string("x=y")));
  // The program's own flags, even ones named like the launcher's, stay the program's.
  EXPECT_EQ(o.command, (std::vector<std::string>{"./train", "--lr", "0.1", "--workers", "2"}));
}

TEST(LaunchOptionsTest, TheProgramMayComeWithoutOrBeforeTheSeparator) {
  ParsedCommandLine plain = parse({"launch", "--workers", "2", "./train", "data"});
  ASSERT_TRUE(plain.options.has_value()) << plain.message;
  EXPECT_EQ(plain.options->command, (std::vector<std::string>{"./train", "data"}));
  ParsedCommandLine after_env = parse({"launch", "--workers", "2", "--env", "A=1", "./train"});
  ASSERT_TRUE(after_env.options.has_value()) << after_env.message;
  EXPECT_EQ(after_env.options->command, (std::vector<std::string>{"./train"}));
  ParsedCommandLine split = parse({"launch", "--workers", "2", "./train", "--", "--epochs", "3"});
  ASSERT_TRUE(split.options.has_value()) << split.message;
  EXPECT_EQ(split.options->command, (std::vector<std::string>{"./train", "--epochs", "3"}));
}

TEST(LaunchOptionsTest, DefaultsAreOneCpuNoGpuNoRestartsPackAndNotElastic) {
  ParsedCommandLine p = parse({"launch", "--workers", "3", "--", "prog"});
  ASSERT_TRUE(p.options.has_value()) << p.message;
  EXPECT_EQ(p.options->min_workers, 3);
  EXPECT_EQ(p.options->cpus_per_worker, 1);
  EXPECT_EQ(p.options->gpus_per_worker, 0);
  EXPECT_EQ(p.options->max_restarts, 0);
  EXPECT_EQ(p.options->placement, PlacementStrategy::kPack);
  EXPECT_TRUE(p.options->address.empty());
  EXPECT_TRUE(p.options->name.empty());
}

TEST(LaunchOptionsTest, EveryPlacementHasItsFlagSpelling) {
  for (PlacementStrategy s : {PlacementStrategy::kPack, PlacementStrategy::kSpread, PlacementStrategy::kStrictPack,
                              PlacementStrategy::kStrictSpread}) {
    ParsedCommandLine p = parse({"launch", "--workers", "1", "--placement", placement_name(s), "--", "prog"});
    ASSERT_TRUE(p.options.has_value()) << p.message;
    EXPECT_EQ(p.options->placement, s);
  }
}

TEST(LaunchOptionsTest, HelpExitsZeroAndNamesTheFlags) {
  ParsedCommandLine p = parse({"launch", "--help"});
  EXPECT_FALSE(p.options.has_value());
  EXPECT_EQ(p.exit_code, 0);
  for (const char* flag : {"--workers", "--gpus-per-worker", "--cpus-per-worker", "--min-workers", "--max-restarts",
                           "--placement", "--address", "--name", "--env"})
    EXPECT_NE(p.message.find(flag), std::string::npos) << flag << "\n" << p.message;
}

struct BadCommandLine {
  std::vector<std::string> args;
  std::string says;
};

class LaunchOptionsUsageTest : public ::testing::TestWithParam<BadCommandLine> {};

TEST_P(LaunchOptionsUsageTest, IsAUsageErrorThatSaysWhy) {
  ParsedCommandLine p = parse(GetParam().args);
  EXPECT_FALSE(p.options.has_value());
  EXPECT_EQ(p.exit_code, kExitUsage);
  EXPECT_NE(p.message.find(GetParam().says), std::string::npos) << p.message;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LaunchOptionsUsageTest,
    ::testing::Values(
        BadCommandLine{{}, "launch"}, BadCommandLine{{"launch", "--", "prog"}, "--workers"},
        BadCommandLine{{"launch", "--workers", "0", "--", "prog"}, "--workers must be 1 or more, not 0"},
        BadCommandLine{{"launch", "--workers", "-2", "--", "prog"}, "--workers must be 1 or more"},
        BadCommandLine{{"launch", "--workers", "two", "--", "prog"}, "two"},
        BadCommandLine{{"launch", "--workers", "2", "--min-workers", "3", "--", "prog"},
                       "--min-workers (3) must not exceed --workers (2)"},
        BadCommandLine{{"launch", "--workers", "2", "--min-workers", "0", "--", "prog"}, "--min-workers must be 1"},
        BadCommandLine{{"launch", "--workers", "2", "--cpus-per-worker", "0", "--", "prog"}, "--cpus-per-worker"},
        BadCommandLine{{"launch", "--workers", "2", "--gpus-per-worker", "-1", "--", "prog"}, "--gpus-per-worker"},
        BadCommandLine{{"launch", "--workers", "2", "--max-restarts", "-1", "--", "prog"}, "--max-restarts"},
        BadCommandLine{{"launch", "--workers", "2", "--placement", "diagonal", "--", "prog"}, "diagonal"},
        BadCommandLine{{"launch", "--workers", "2", "--env", "NOVALUE", "--", "prog"}, "NAME=VALUE"},
        BadCommandLine{{"launch", "--workers", "2"}, "no program given"},
        BadCommandLine{{"launch", "--workers", "2", "--"}, "no program given"},
        BadCommandLine{{"launch", "--workers", "2", "--bogus", "--", "prog"}, "--bogus"},
        BadCommandLine{{"launch", "--workers", "2", "./train", "--lr", "1"}, "after --"}));

class ResolveProgramTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("resolve_program_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_ / "bin");
    make_file(dir_ / "bin" / "trainer", 0755);
    make_file(dir_ / "data.txt", 0644);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  static void make_file(const std::filesystem::path& path, mode_t mode) {
    std::ofstream(path) << "#!/bin/sh\n";
    ::chmod(path.c_str(), mode);
  }
  std::filesystem::path dir_;
};

TEST_F(ResolveProgramTest, ARelativePathIsTakenFromTheWorkingDirectory) {
  EXPECT_EQ(resolve_program("./bin/trainer", dir_.string(), ""), (dir_ / "bin" / "trainer").string());
  EXPECT_EQ(resolve_program("bin/../bin/trainer", dir_.string(), ""), (dir_ / "bin" / "trainer").string());
  EXPECT_EQ(resolve_program((dir_ / "bin" / "trainer").string(), "/", ""), (dir_ / "bin" / "trainer").string());
}

TEST_F(ResolveProgramTest, ABareNameIsSearchedInThePath) {
  std::string path = "/nonexistent:" + (dir_ / "bin").string();
  EXPECT_EQ(resolve_program("trainer", "/", path), (dir_ / "bin" / "trainer").string());
  EXPECT_THROW(resolve_program("trainer", dir_.string(), "/nonexistent"), std::invalid_argument);
}

TEST_F(ResolveProgramTest, AMissingOrNonExecutableProgramIsNamed) {
  try {
    resolve_program("./missing", dir_.string(), "");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("./missing not found"), std::string::npos) << e.what();
  }
  try {
    resolve_program("./data.txt", dir_.string(), "");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not an executable file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resolve_program("./bin", dir_.string(), ""), std::invalid_argument);  // a directory
}

}  // namespace
}  // namespace gantry::train::launch
