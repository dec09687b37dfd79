// `gantry train launch` on real clusters started with `gantry start`: one node with two
// CPUs, and two loopback nodes with one CPU each. The programs it launches are small shell
// scripts (always) and the example train_launch, an ordinary c10d program (when LibTorch
// was there to build it).

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/shell.h"

#ifndef TRAIN_LAUNCH_PATH
#define TRAIN_LAUNCH_PATH ""  // the example was not built (no LibTorch)
#endif

extern char** environ;

namespace {

using namespace std::chrono_literals;
using gantry::test_support::CommandResult;
using gantry::test_support::free_port;

/// A shell command line running in the background, its stdout and stderr read together as
/// they come. Signals go to the shell: end the line with `exec program` to reach the program.
class Running {
 public:
  explicit Running(const std::string& command) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
    const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
    if (::posix_spawn(&pid_, "/bin/sh", &actions, nullptr, const_cast<char**>(argv), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    fd_ = fds[0];
  }
  ~Running() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }

  /// Reads until `pattern` is in the output, the output ends, or `limit` passes.
  bool wait_for(const std::regex& pattern, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!std::regex_search(out_, pattern)) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left <= 0ms || !read_some(left)) return std::regex_search(out_, pattern);
    }
    return true;
  }

  /// Reads the rest of the output and returns the exit code: -1 when a signal ended the
  /// command, -2 when it did not end within `limit` (it is killed).
  int finish(std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) {
        out_ += "\n<<test: killed after " + std::to_string(limit.count()) + " ms>>\n";
        return -2;
      }
      if (!read_some(left)) break;
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  void signal(int sig) { ::kill(pid_, sig); }
  const std::string& output() const { return out_; }

 private:
  // False at the end of the output.
  bool read_some(std::chrono::milliseconds limit) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return true;
    char buf[4096];
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) return false;
    out_.append(buf, static_cast<size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  std::string out_;
};

CommandResult run_for(const std::string& command, std::chrono::milliseconds limit = 60s) {
  Running r(command);
  CommandResult result;
  result.code = r.finish(limit);
  result.out = r.output();
  return result;
}

void write_script(const std::filesystem::path& path, const std::string& body) {
  std::ofstream(path) << "#!/bin/sh\n" << body;
  ::chmod(path.c_str(), 0755);
}

std::set<std::string> matches(const std::string& text, const std::string& pattern) {
  std::set<std::string> out;
  std::regex re(pattern);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.insert((*it)[1].str());
  return out;
}

bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string id, comm, state;
  return !(stat >> id >> comm >> state) || state == "Z";
}

/// Starts a cluster with `gantry start` under its own temporary directory.
class LaunchCluster {
 public:
  /// `node_cpus`: one entry per node; the first is the head. Each node also declares
  /// `gpus_per_node` logical GPUs.
  void start(const std::string& tag, const std::vector<int>& node_cpus, int gpus_per_node = 0) {
    temp_ = std::filesystem::path("/tmp") / (tag + std::to_string(::getpid()));
    std::filesystem::create_directories(temp_);
    address_ = "127.0.0.1:" + std::to_string(free_port());
    for (size_t i = 0; i < node_cpus.size(); ++i) {
      std::string role = i == 0 ? "--head --port " + address_.substr(address_.find(':') + 1) : "--address " + address_;
      CommandResult r =
          gantry::test_support::run(std::string(GANTRY_CLI_PATH) + " start " + role +
                                    " --node-ip-address 127.0.0.1 --num-cpus " + std::to_string(node_cpus[i]) +
                                    " --num-gpus " + std::to_string(gpus_per_node) + " --temp-dir " + temp_.string());
      output_ += r.out;
      if (r.code != 0) {
        code_ = r.code;
        return;
      }
    }
    code_ = 0;
    write_script(temp_ / "env.sh",
                 "echo \"env RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE "
                 "LOCAL_WORLD_SIZE=$LOCAL_WORLD_SIZE NODE_RANK=$NODE_RANK GROUP_RANK=$GROUP_RANK "
                 "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT "
                 "TORCHELASTIC_RESTART_COUNT=$TORCHELASTIC_RESTART_COUNT "
                 "TORCHELASTIC_MAX_RESTARTS=$TORCHELASTIC_MAX_RESTARTS TORCHELASTIC_RUN_ID=$TORCHELASTIC_RUN_ID "
                 "OMP_NUM_THREADS=$OMP_NUM_THREADS OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS "
                 "GANTRY_WORKER=${GANTRY_WORKER:-unset} FOO=${FOO:-unset} "
                 "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset} ARGS=$* PWD=$(pwd)\"\n"
                 "echo \"rank $RANK on stderr\" >&2\n");
    write_script(temp_ / "fail_once.sh",
                 "if [ \"$RANK\" = \"$1\" ] && [ ! -e \"$2\" ]; then\n"
                 "  touch \"$2\"; echo \"rank $RANK fails on purpose\" >&2; exit 3\n"
                 "fi\n"
                 "echo \"rank $RANK ok at restart $TORCHELASTIC_RESTART_COUNT\"\n");
    write_script(temp_ / "wait_for_file.sh",
                 "echo \"rank $RANK waiting for $1\"\n"
                 "i=0\n"
                 "while [ ! -e \"$1\" ]; do\n"
                 "  sleep 0.05; i=$((i+1)); if [ $i -gt 400 ]; then echo gave up >&2; exit 9; fi\n"
                 "done\n"
                 "echo \"rank $RANK saw it\"\n");
    write_script(temp_ / "sleeper.sh", "echo \"pid $$\"\nexec sleep 60\n");
    // Sleeps in the first attempt; says which worker process (its parent) runs it.
    write_script(temp_ / "sleep_first_time.sh",
                 "echo \"pid $$ worker $PPID restart $TORCHELASTIC_RESTART_COUNT\"\n"
                 "if [ \"$TORCHELASTIC_RESTART_COUNT\" = 0 ]; then exec sleep 60; fi\n");
  }
  void stop() {
    gantry::test_support::run(std::string(GANTRY_CLI_PATH) + " stop --temp-dir " + temp_.string());
    std::error_code ec;
    std::filesystem::remove_all(temp_, ec);
  }

  /// `gantry train launch` against this cluster, found through --temp-dir like the other
  /// `gantry` commands (no --address).
  std::string launch(const std::string& args) const {
    return "cd " + temp_.string() + " && exec " + GANTRY_CLI_PATH + " train launch --temp-dir " + temp_.string() + " " +
           args;
  }
  std::string script(const std::string& name) const { return (temp_ / name).string(); }

  std::filesystem::path temp_;
  std::string address_;
  std::string output_;
  int code_ = -1;
};

class OneNodeLaunchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_.start("gtl", {2}, /*gpus_per_node=*/2); }
  static void TearDownTestSuite() { cluster_.stop(); }
  void SetUp() override { ASSERT_EQ(cluster_.code_, 0) << cluster_.output_; }

  static inline LaunchCluster cluster_;
};

TEST_F(OneNodeLaunchTest, EveryRankGetsTorchrunsEnvironmentAndItsLinesArePrefixed) {
  CommandResult r =
      run_for(cluster_.launch("--workers 2 --name envrun --env FOO=bar -- " + cluster_.script("env.sh") + " a b"));
  ASSERT_EQ(r.code, 0) << r.out;
  std::smatch port;
  ASSERT_TRUE(std::regex_search(r.out, port, std::regex("MASTER_PORT=([0-9]+) TORCHELASTIC"))) << r.out;
  for (int rank = 0; rank < 2; ++rank) {
    std::string line =
        "[rank " + std::to_string(rank) + "] env RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
        " WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 NODE_RANK=0 GROUP_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port[1].str() +
        " TORCHELASTIC_RESTART_COUNT=0 TORCHELASTIC_MAX_RESTARTS=0 TORCHELASTIC_RUN_ID=envrun "
        "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 GANTRY_WORKER=unset FOO=bar CUDA_VISIBLE_DEVICES= "
        "ARGS=a b PWD=" +
        cluster_.temp_.string() + "\n";
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
    EXPECT_NE(r.out.find("[rank " + std::to_string(rank) + "] rank " + std::to_string(rank) + " on stderr\n"),
              std::string::npos)
        << r.out;
  }
  EXPECT_NE(r.out.find("running: 2 rank(s) on 1 node(s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("succeeded: every rank exited 0"), std::string::npos) << r.out;
}

TEST_F(OneNodeLaunchTest, GpuWorkersOnANodeSeeTheNodesGpusWithTheirOwnAtTheirLocalRank) {
  CommandResult r = run_for(cluster_.launch("--workers 2 --gpus-per-worker 1 -- " + cluster_.script("env.sh")));
  ASSERT_EQ(r.code, 0) << r.out;
  // Each worker holds one logical GPU of the two; both see both, in local-rank order.
  std::set<std::string> seen = matches(r.out, "\\[rank [01]\\] env .* CUDA_VISIBLE_DEVICES=([0-9,]*) ");
  EXPECT_TRUE(seen == std::set<std::string>{"0,1"} || seen == std::set<std::string>{"1,0"}) << r.out;
  EXPECT_NE(r.out.find("2 worker(s) of {CPU: 1, GPU: 1}"), std::string::npos) << r.out;
}

TEST_F(OneNodeLaunchTest, AKilledWorkerRestartsTheGroupAndTakesItsProgramAlong) {
  Running launch(cluster_.launch("--workers 2 --max-restarts 1 -- " + cluster_.script("sleep_first_time.sh")));
  ASSERT_TRUE(launch.wait_for(std::regex("\\[rank 1\\] pid [0-9]+ worker [0-9]+ restart 0\n"), 30s)) << launch.output();
  std::smatch m;
  std::string out = launch.output();
  ASSERT_TRUE(std::regex_search(out, m, std::regex("\\[rank 1\\] pid ([0-9]+) worker ([0-9]+) restart 0")));
  pid_t program = std::stoi(m[1].str());
  ::kill(std::stoi(m[2].str()), SIGKILL);
  EXPECT_EQ(launch.finish(30s), 0) << launch.output();
  EXPECT_TRUE(std::regex_search(launch.output(), std::regex("restarting: rank 1's worker on node [0-9a-f]{8} .* died: "
                                                            ".*restarting the group \\(restart 1 of 1\\)")))
      << launch.output();
  EXPECT_TRUE(std::regex_search(launch.output(), std::regex("\\[rank 1\\] pid [0-9]+ worker [0-9]+ restart 1")))
      << launch.output();
  EXPECT_TRUE(process_gone(program)) << "the killed worker's program " << program << " still runs";
}

TEST_F(OneNodeLaunchTest, LinesAppearWhileTheProgramRuns) {
  std::string file = cluster_.script("go");
  Running launch(cluster_.launch("--workers 2 -- " + cluster_.script("wait_for_file.sh") + " " + file));
  // Every rank waits for the file, which this test makes only once it has seen their lines.
  ASSERT_TRUE(launch.wait_for(std::regex("\\[rank 0\\] rank 0 waiting for"), 30s)) << launch.output();
  ASSERT_TRUE(launch.wait_for(std::regex("\\[rank 1\\] rank 1 waiting for"), 10s)) << launch.output();
  std::ofstream(file) << "go";
  EXPECT_EQ(launch.finish(30s), 0) << launch.output();
  EXPECT_NE(launch.output().find("[rank 0] rank 0 saw it"), std::string::npos) << launch.output();
  EXPECT_NE(launch.output().find("[rank 1] rank 1 saw it"), std::string::npos) << launch.output();
}

TEST_F(OneNodeLaunchTest, AFailedRankRestartsTheGroupWithTheNextRestartCount) {
  std::string marker = cluster_.script("failed_once");
  CommandResult r =
      run_for(cluster_.launch("--workers 2 --max-restarts 1 -- " + cluster_.script("fail_once.sh") + " 1 " + marker));
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[rank 1] rank 1 fails on purpose"), std::string::npos) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("restarting: rank 1 on node [0-9a-f]{8} \\([^,]+, 127\\.0\\.0\\.1\\) "
                                                  "exited with status 3; restarting the group \\(restart 1 of 1\\)")))
      << r.out;
  EXPECT_NE(r.out.find("[rank 0] rank 0 ok at restart 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[rank 1] rank 1 ok at restart 1"), std::string::npos) << r.out;
}

TEST_F(OneNodeLaunchTest, WithoutRestartsAFailedRankFailsTheLaunchNamingIt) {
  std::string marker = cluster_.script("failed_no_restart");
  CommandResult r = run_for(cluster_.launch("--workers 2 -- " + cluster_.script("fail_once.sh") + " 1 " + marker));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("failed: rank 1 on node [0-9a-f]{8} \\([^,]+, 127\\.0\\.0\\.1\\) "
                                                  "exited with status 3; no restarts left \\(--max-restarts 0\\)")))
      << r.out;
  EXPECT_EQ(r.out.find("restarting"), std::string::npos) << r.out;
}

TEST_F(OneNodeLaunchTest, ElasticStartsWithWhatFitsAndTooBigAGroupFails) {
  CommandResult elastic = run_for(cluster_.launch("--workers 3 --min-workers 2 -- " + cluster_.script("env.sh")));
  EXPECT_EQ(elastic.code, 0) << elastic.out;
  EXPECT_EQ(matches(elastic.out, "\\[rank ([0-9]+)\\] env RANK=[0-9]+ LOCAL_RANK=[0-9]+ WORLD_SIZE=2 "),
            (std::set<std::string>{"0", "1"}))
      << elastic.out;

  CommandResult fixed = run_for(cluster_.launch("--workers 3 -- " + cluster_.script("env.sh")));
  EXPECT_EQ(fixed.code, 1) << fixed.out;
  EXPECT_NE(fixed.out.find("the cluster can never hold the group"), std::string::npos) << fixed.out;
}

TEST_F(OneNodeLaunchTest, SigtermToTheLauncherEndsEveryRanksProgram) {
  Running launch(cluster_.launch("--workers 2 -- " + cluster_.script("sleeper.sh")));
  ASSERT_TRUE(launch.wait_for(std::regex("\\[rank 0\\] pid [0-9]+\n"), 30s)) << launch.output();
  ASSERT_TRUE(launch.wait_for(std::regex("\\[rank 1\\] pid [0-9]+\n"), 10s)) << launch.output();
  std::set<std::string> pids = matches(launch.output(), "\\] pid ([0-9]+)\n");
  ASSERT_EQ(pids.size(), 2u) << launch.output();
  launch.signal(SIGTERM);
  EXPECT_EQ(launch.finish(20s), 128 + SIGTERM) << launch.output();
  EXPECT_NE(launch.output().find("interrupted: stopped by SIGTERM"), std::string::npos) << launch.output();
  for (const std::string& pid : pids) EXPECT_TRUE(process_gone(std::stoi(pid))) << "pid " << pid << " still runs";
}

TEST_F(OneNodeLaunchTest, BadCommandLinesExitWithTheUsageCodeBeforeStartingAnything) {
  struct Case {
    std::string args, says;
  };
  for (const Case& c : std::vector<Case>{
           {"--workers 0 -- /bin/true", "--workers must be 1 or more"},
           {"--workers 2 --min-workers 3 -- /bin/true", "--min-workers (3) must not exceed --workers (2)"},
           {"--workers 2", "no program given"},
           {"--workers 2 -- ./no-such-program", "./no-such-program not found"},
           {"--workers 2 --placement sideways -- /bin/true", "sideways"},
       }) {
    CommandResult r = run_for(cluster_.launch(c.args), 10s);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.says), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(r.out.find("placing"), std::string::npos) << r.out;
  }
  // gantry-train itself, as `gantry train` runs it.
  CommandResult direct = run_for(std::string(GANTRY_TRAIN_PATH) + " launch --workers 0 -- /bin/true", 10s);
  EXPECT_EQ(direct.code, 2) << direct.out;
  EXPECT_NE(direct.out.find("--workers must be 1 or more"), std::string::npos) << direct.out;
  CommandResult help = run_for(std::string(GANTRY_CLI_PATH) + " train launch --help", 10s);
  EXPECT_EQ(help.code, 0) << help.out;
  EXPECT_NE(help.out.find("--min-workers"), std::string::npos) << help.out;
}

TEST_F(OneNodeLaunchTest, TheC10dExampleAllreducesAcrossItsRanks) {
  if (std::string(TRAIN_LAUNCH_PATH).empty()) GTEST_SKIP() << "the example train_launch needs LibTorch";
  CommandResult r = run_for(cluster_.launch("--workers 2 -- " TRAIN_LAUNCH_PATH));
  ASSERT_EQ(r.code, 0) << r.out;
  for (int rank = 0; rank < 2; ++rank) {
    std::string id = std::to_string(rank);
    EXPECT_TRUE(std::regex_search(
        r.out, std::regex("\\[rank " + id + "\\] env RANK=" + id + " LOCAL_RANK=" + id +
                          " WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 NODE_RANK=0 MASTER_ADDR=127\\.0\\.0\\.1 MASTER_PORT=[0-9]+ "
                          "TORCHELASTIC_RESTART_COUNT=0 ")))
        << r.out;
    EXPECT_NE(r.out.find("[rank " + id + "] rank " + id + " of 2: allreduce sum 3 (expected 3), broadcast 42: OK"),
              std::string::npos)
        << r.out;
  }
}

TEST_F(OneNodeLaunchTest, TheC10dExampleRestartsAfterARankFails) {
  if (std::string(TRAIN_LAUNCH_PATH).empty()) GTEST_SKIP() << "the example train_launch needs LibTorch";
  std::string marker = cluster_.script("example_failed_once");
  CommandResult r = run_for(cluster_.launch(
      "--workers 2 --max-restarts 1 -- " TRAIN_LAUNCH_PATH " --fail-once-at-rank 1 --marker " + marker));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("[rank 1] failing on purpose: rank 1, first run"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("exited with status 3; restarting the group (restart 1 of 1)"), std::string::npos) << r.out;
  for (const char* id : {"0", "1"}) {
    EXPECT_TRUE(std::regex_search(r.out, std::regex(std::string("\\[rank ") + id + "\\] env RANK=" + id +
                                                    " .* TORCHELASTIC_RESTART_COUNT=1 TORCHELASTIC_MAX_RESTARTS=1 ")))
        << r.out;
    EXPECT_NE(r.out.find(std::string("[rank ") + id + "] rank " + id + " of 2: allreduce sum 3 (expected 3)"),
              std::string::npos)
        << r.out;
  }

  std::string fresh = cluster_.script("example_failed_no_restart");
  CommandResult failed =
      run_for(cluster_.launch("--workers 2 -- " TRAIN_LAUNCH_PATH " --fail-once-at-rank 1 --marker " + fresh));
  EXPECT_EQ(failed.code, 1) << failed.out;
  EXPECT_TRUE(std::regex_search(failed.out, std::regex("failed: rank 1 on node [0-9a-f]{8} .* exited with status 3")))
      << failed.out;
}

class TwoNodeLaunchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_.start("gtm", {1, 1}); }
  static void TearDownTestSuite() { cluster_.stop(); }
  void SetUp() override { ASSERT_EQ(cluster_.code_, 0) << cluster_.output_; }

  static inline LaunchCluster cluster_;
};

TEST_F(TwoNodeLaunchTest, RanksOnTwoNodesGetNodeRanksAndOneMaster) {
  CommandResult r =
      run_for(cluster_.launch("--address " + cluster_.address_ + " --workers 2 -- " + cluster_.script("env.sh")));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("running: 2 rank(s) on 2 node(s)"), std::string::npos) << r.out;
  // Rank 0's node is node 0; each node holds one rank.
  EXPECT_TRUE(
      std::regex_search(r.out, std::regex("\\[rank 0\\] env RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 "
                                          "LOCAL_WORLD_SIZE=1 NODE_RANK=0 GROUP_RANK=0 MASTER_ADDR=127\\.0\\.0\\.1 ")))
      << r.out;
  EXPECT_TRUE(
      std::regex_search(r.out, std::regex("\\[rank 1\\] env RANK=1 LOCAL_RANK=0 WORLD_SIZE=2 "
                                          "LOCAL_WORLD_SIZE=1 NODE_RANK=1 GROUP_RANK=1 MASTER_ADDR=127\\.0\\.0\\.1 ")))
      << r.out;
  EXPECT_EQ(matches(r.out, "MASTER_PORT=([0-9]+) ").size(), 1u) << r.out;
}

TEST_F(TwoNodeLaunchTest, TheC10dExampleAllreducesAcrossNodes) {
  if (std::string(TRAIN_LAUNCH_PATH).empty()) GTEST_SKIP() << "the example train_launch needs LibTorch";
  CommandResult r = run_for(cluster_.launch("--workers 2 --placement strict-spread -- " TRAIN_LAUNCH_PATH));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("running: 2 rank(s) on 2 node(s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[rank 0] rank 0 of 2: allreduce sum 3 (expected 3), broadcast 42: OK"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("[rank 1] rank 1 of 2: allreduce sum 3 (expected 3), broadcast 42: OK"), std::string::npos)
      << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex("\\[rank 1\\] env RANK=1 LOCAL_RANK=0 WORLD_SIZE=2 "
                                                  "LOCAL_WORLD_SIZE=1 NODE_RANK=1 ")))
      << r.out;
}

}  // namespace
