// A real cluster of processes on this machine, started and stopped with the `gantry`
// command: a head node, a second node joining it, drivers joining by address. This test
// binary is the drivers' program and, started by the agents, their workers.

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fcntl.h>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <regex>
#include <map>
#include <set>
#include <string>
#include <thread>

#include "gantry/collective.h"
#include "gantry/gantry.h"
#include "support/shell.h"

namespace {

int add(int a, int b) { return a + b; }
GANTRY_REMOTE(add);

std::string where() { return gantry::runtime_context().node_id; }
GANTRY_REMOTE(where);

int shout(std::string word) {
  std::cout << "shout: " << word << std::endl;
  return 1;
}
GANTRY_REMOTE(shout);

// Holds its CPUs for `ms`, then says where it ran.
std::string busy_where(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return gantry::runtime_context().node_id;
}
GANTRY_REMOTE(busy_where);

// Waits (up to 30 s) until `n` tasks have arrived in `dir`, then says where it ran: tasks
// that must run at the same time, however slowly workers start.
std::string meet_where(std::string dir, int n) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + std::to_string(::getpid()) + "-" + std::to_string(std::rand())) << "here";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    int arrived = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++arrived;
    if (arrived >= n) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return gantry::runtime_context().node_id;
}
GANTRY_REMOTE(meet_where);

// Large values (above the inline threshold) live in node stores and cross between nodes.
std::vector<double> ramp(int n, double step) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i * step;
  return v;
}
GANTRY_REMOTE(ramp);

double total(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return sum;
}
GANTRY_REMOTE(total);

std::vector<double> scale(const std::vector<double>& v, double factor) {
  std::vector<double> out(v);
  for (double& x : out) x *= factor;
  return out;
}
GANTRY_REMOTE(scale);

std::string wait_key(std::string key) {
  return gantry::kv::wait(key, std::chrono::seconds(30)).value_or("<timeout>") + " on " +
         gantry::runtime_context().node_id;
}
GANTRY_REMOTE(wait_key);

// Rank `rank` of a group of `world`: allreduces 100k floats (rank + 1 each) and reports
// the backend and the first and last element.
std::string allreduce_rank(std::string group, int world, int rank) {
  namespace col = gantry::collective;
  try {
    // A group whose name starts with "gloo-" asks for Gloo; the others choose for themselves.
    auto backend = group.rfind("gloo-", 0) == 0 ? col::BackendKind::kGloo : col::BackendKind::kAuto;
    auto comm = col::Communicator::join({.group = group, .world_size = world, .rank = rank, .backend = backend});
    std::vector<float> v(100000, static_cast<float>(rank + 1));
    comm.allreduce(std::span<float>(v));
    return std::string(col::to_string(comm.backend())) + " " + std::to_string(static_cast<int>(v.front())) + " " +
           std::to_string(static_cast<int>(v.back()));
  } catch (const std::exception& e) {
    return std::string("threw: ") + e.what();
  }
}
GANTRY_REMOTE(allreduce_rank);

// Rank 1 of `group`: tells the driver its pid, then allreduces until the group fails.
std::string allreduce_until_failure(std::string group) {
  namespace col = gantry::collective;
  try {
    auto comm = col::Communicator::join({.group = group, .world_size = 2, .rank = 1});
    gantry::kv::put(group + "/pid", std::to_string(::getpid()));
    std::vector<float> v(1000, 1.0f);
    while (true) comm.allreduce(std::span<float>(v));
  } catch (const std::exception& e) {
    return e.what();
  }
}
GANTRY_REMOTE(allreduce_until_failure);

class Tally {
 public:
  static Tally* create(int start) { return new Tally(start); }
  int bump() { return ++n_; }
  std::string node() const { return gantry::runtime_context().node_id; }

 private:
  explicit Tally(int start) : n_(start) {}
  int n_;
};
GANTRY_REMOTE(Tally::create, &Tally::bump, &Tally::node);

using gantry::test_support::CommandResult;
using gantry::test_support::free_port;
using gantry::test_support::node_pid;
using gantry::test_support::run;

// Runs `command` until `pattern` matches its output (or the time is up); returns the last output.
std::string run_until(const std::string& command, const std::regex& pattern, std::chrono::seconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  std::string out;
  do {
    out = run(command).out;
    if (std::regex_search(out, pattern)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (std::chrono::steady_clock::now() < deadline);
  return out;
}

// The 8-hex short id `gantry start` prints for a node, from a full node id.
std::string short_id(const std::string& node_id) { return node_id.substr(0, 4) + node_id.substr(16, 4); }

std::string joined_id(const std::string& start_output) {
  std::smatch m;
  if (!std::regex_search(start_output, m, std::regex("gantry node ([0-9a-f]{8}) joined"))) return {};
  return m[1].str();
}

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Short: Unix socket paths under it are limited to about 100 bytes.
    temp_ = std::filesystem::path("/tmp") / ("gct" + std::to_string(::getpid()));
    std::filesystem::create_directories(temp_);
    port_ = free_port();
    address_ = "127.0.0.1:" + std::to_string(port_);
    CommandResult head = run(std::string(GANTRY_CLI_PATH) + " start --head --node-ip-address 127.0.0.1 --port " +
                   std::to_string(port_) + " --num-cpus 2 --num-gpus 2 --node-timeout 2 --temp-dir " + temp_.string());
    head_output_ = head.out;
    head_code_ = head.code;
  }
  static void TearDownTestSuite() {
    run(std::string(GANTRY_CLI_PATH) + " stop --temp-dir " + temp_.string());
    std::error_code ec;
    std::filesystem::remove_all(temp_, ec);
  }
  void SetUp() override { ASSERT_EQ(head_code_, 0) << head_output_; }

  static std::string cli(const std::string& args) {
    return std::string(GANTRY_CLI_PATH) + " " + args + " --temp-dir " + temp_.string();
  }

  static inline std::filesystem::path temp_;
  static inline int port_ = 0;
  static inline std::string address_;
  static inline std::string head_output_;
  static inline int head_code_ = -1;
};

TEST_F(ClusterTest, StartPrintsTheAddressAndTheJoinCommand) {
  EXPECT_NE(head_output_.find("gantry head started at " + address_), std::string::npos) << head_output_;
  EXPECT_NE(head_output_.find("gantry start --address " + address_), std::string::npos) << head_output_;
  EXPECT_NE(head_output_.find("GANTRY_TOKEN="), std::string::npos) << head_output_;
  // The session directory holds the token, readable by this user only.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(head_output_, m, std::regex("session: (\\S+)")));
  auto perms = std::filesystem::status(m[1].str() + "/token").permissions();
  EXPECT_EQ(perms & std::filesystem::perms::all, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

TEST_F(ClusterTest, DriverJoinsByAddressAndItsWorkersStopWithIt) {
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_EQ(gantry::task(add).remote(2, 3).get(), 5);
  std::vector<gantry::ObjectRef<int>> refs;
  for (int i = 0; i < 20; ++i) refs.push_back(gantry::task(add).remote(i, 1));
  int sum = 0;
  for (auto& r : refs) sum += r.get();
  EXPECT_EQ(sum, 210);
  auto tally = gantry::actor(Tally::create).options({.name = "tally"}).remote(10);
  EXPECT_EQ(tally.task(&Tally::bump).remote().get(), 11);
  auto same = gantry::get_actor<Tally>("tally");
  ASSERT_TRUE(same.has_value());
  EXPECT_EQ(same->task(&Tally::bump).remote().get(), 12);
  std::string workers = run(cli("status")).out;
  EXPECT_TRUE(std::regex_search(workers, std::regex("alive .* [1-9][0-9]* \\("))) << workers;
  gantry::shutdown();
  // The job is over: the agent stops its workers, the actor included.
  std::string after = run_until(cli("status"), std::regex(" 0 \\(0 idle\\)"), std::chrono::seconds(10));
  EXPECT_TRUE(std::regex_search(after, std::regex(" 0 \\(0 idle\\)"))) << after;
}

TEST_F(ClusterTest, DetachedActorsOutliveTheirDriverUntilKilled) {
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  auto keeper = gantry::actor(Tally::create).options({.name = "keeper", .max_restarts = 1, .detached = true}).remote(100);
  auto temporary = gantry::actor(Tally::create).options({.name = "temporary"}).remote(0);
  EXPECT_EQ(keeper.task(&Tally::bump).remote().get(), 101);
  EXPECT_EQ(temporary.task(&Tally::bump).remote().get(), 1);
  gantry::shutdown();

  // A later driver (another job) finds the detached actor with its state; the other
  // actor ended with its job.
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_FALSE(gantry::get_actor<Tally>("temporary").has_value());
  auto found = gantry::get_actor<Tally>("keeper");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->task(&Tally::bump).remote().get(), 102);
  // Its process dies after its job ended: it restarts (max_restarts = 1) from its factory.
  gantry::kill(*found, /*no_restart=*/false);
  auto restarted = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int value = -1;
  while (value < 0 && std::chrono::steady_clock::now() < restarted) {
    try {
      value = found->task(&Tally::bump).remote().get();
    } catch (const gantry::ActorDiedError&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the call raced the kill
    }
  }
  EXPECT_EQ(value, 101);
  std::string listed = run(cli("list actors")).out;
  EXPECT_TRUE(std::regex_search(listed, std::regex("ALIVE .*Tally +keeper .* detached"))) << listed;
  gantry::kill(*found);
  EXPECT_THROW(found->task(&Tally::bump).remote().get(), gantry::ActorDiedError);
  EXPECT_FALSE(gantry::get_actor<Tally>("keeper").has_value());
  gantry::shutdown();
}

// A joined driver is not its workers' parent: their lines come to it over RPC.
TEST_F(ClusterTest, WorkerOutputReachesTheJoinedDriversTerminal) {
  std::string capture = (temp_ / "driver_stdout.txt").string();
  std::fflush(stdout);
  int saved = ::dup(1);
  int file = ::open(capture.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ::dup2(file, 1);
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_EQ(gantry::task(shout).remote(std::string("over-the-wire")).get(), 1);
  std::string text;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (text.find("over-the-wire") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(capture);
    std::stringstream all;
    all << in.rdbuf();
    text = all.str();
  }
  gantry::shutdown();
  std::fflush(stdout);
  ::dup2(saved, 1);
  ::close(saved);
  ::close(file);
  EXPECT_TRUE(std::regex_search(text, std::regex("\\(shout pid=[0-9]+\\) shout: over-the-wire"))) << text;
}

TEST_F(ClusterTest, AddressFromTheCommandLineFlag) {
  std::string flag = "--gantry-address=" + address_;
  char arg0[] = "cluster_test";
  std::vector<char*> argv = {arg0, flag.data()};
  gantry::init(static_cast<int>(argv.size()), argv.data(), {.temp_dir = temp_.string()});
  EXPECT_EQ(gantry::task(add).remote(40, 2).get(), 42);
  gantry::shutdown();
}

TEST_F(ClusterTest, SecondNodeJoinsAndTakesWorkOnlyItCanHold) {
  CommandResult node = run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"B\": 1}'"));
  ASSERT_EQ(node.code, 0) << node.out;
  EXPECT_NE(node.out.find("joined " + address_), std::string::npos) << node.out;
  std::string status = run(cli("status")).out;
  EXPECT_NE(status.find("2 node(s)"), std::string::npos) << status;
  EXPECT_NE(status.find("0/1 B"), std::string::npos) << status;

  std::smatch m;
  ASSERT_TRUE(std::regex_search(status, m, std::regex("\\n([0-9a-f]{8}) .*0/1 B"))) << status;
  std::string b_node = m[1].str();

  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_EQ(gantry::task(where).remote().get().size(), 32u);
  // Only the second node has B: the actor must be placed there.
  auto tally = gantry::actor(Tally::create).options({.resources = {{"B", 1}}}).remote(0);
  std::string actor_node = tally.task(&Tally::node).remote().get();
  ASSERT_EQ(actor_node.size(), 32u);
  EXPECT_EQ(actor_node.substr(0, 4) + actor_node.substr(16, 4), b_node) << status;
  EXPECT_EQ(tally.task(&Tally::bump).remote().get(), 1);
  std::string busy = run(cli("status")).out;
  EXPECT_NE(busy.find("1/1 B"), std::string::npos) << busy;
  gantry::shutdown();
}

TEST_F(ClusterTest, NodeRefusesExecutablesOutsideItsAllowedDirectories) {
  CommandResult node = run(cli("start --address " + address_ +
                               " --node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"C\": 1}' "
                               "--allowed-executables /nonexistent/jobs"));
  ASSERT_EQ(node.code, 0) << node.out;
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  auto tally = gantry::actor(Tally::create).options({.resources = {{"C", 1}}}).remote(0);
  try {
    tally.task(&Tally::bump).remote().get();
    ADD_FAILURE() << "the node ran an executable outside its allowed directories";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--allowed-executables"), std::string::npos) << e.what();
  }
  // Tasks sent to that node are placed again without it: a soft affinity runs elsewhere,
  // on every request (each one of the three tasks needs its own lease)...
  std::string refusing;
  for (const auto& n : gantry::nodes())
    if (short_id(n.node_id) == joined_id(node.out)) refusing = n.node_id;
  ASSERT_FALSE(refusing.empty());
  std::vector<gantry::ObjectRef<std::string>> soft;
  for (int i = 0; i < 3; ++i)
    soft.push_back(gantry::task(busy_where)
                       .options({.scheduling = gantry::SchedulingStrategy::node_affinity(refusing, /*soft=*/true)})
                       .remote(200));
  for (auto& r : soft) EXPECT_NE(r.get(), refusing);
  // So is an actor the head sends there.
  auto placed = gantry::actor(Tally::create)
                    .options({.scheduling = gantry::SchedulingStrategy::node_affinity(refusing, /*soft=*/true)})
                    .remote(0);
  EXPECT_NE(placed.task(&Tally::node).remote().get(), refusing);
  // ... and a task only it could hold fails with its reason, not just "infeasible".
  try {
    gantry::task(where).options({.resources = {{"C", 1}}}).remote().get();
    ADD_FAILURE() << "a task ran on a node that refuses its executable";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--allowed-executables"), std::string::npos) << e.what();
  }
  gantry::shutdown();
  // Later tests spread work over the cluster: take this node out of it.
  std::string id = joined_id(node.out);
  ASSERT_EQ(::kill(node_pid(node.out), SIGKILL), 0);
  std::string status = run_until(cli("status"), std::regex(id + " +dead"), std::chrono::seconds(10));
  EXPECT_TRUE(std::regex_search(status, std::regex(id + " +dead"))) << status;
}

TEST_F(ClusterTest, WrongTokenIsRefused) {
  CommandResult r = run("GANTRY_TOKEN=0000 " + cli("status"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("token"), std::string::npos) << r.out;
  ::setenv("GANTRY_TOKEN", "0000", 1);
  EXPECT_THROW(gantry::init({.temp_dir = temp_.string(), .address = address_}), gantry::Error);
  ::unsetenv("GANTRY_TOKEN");
  EXPECT_FALSE(gantry::is_initialized());
}

TEST_F(ClusterTest, BadCommandLinesExitWithTheUsageCode) {
  EXPECT_EQ(run(cli("start")).code, 2);
  EXPECT_EQ(run(cli("start --head --resources '{\"A\": x}'")).code, 2);
  EXPECT_EQ(run(cli("start --head --num-cpus -3")).code, 2);
  EXPECT_EQ(run(std::string(GANTRY_CLI_PATH) + " frobnicate").code, 2);
  CommandResult help = run(std::string(GANTRY_CLI_PATH) + " start --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--num-gpus"), std::string::npos) << help.out;
  // A driver given an address nobody serves fails with a clear error.
  EXPECT_THROW(gantry::init({.temp_dir = temp_.string(), .address = "127.0.0.1:1"}), gantry::Error);
}

TEST_F(ClusterTest, DeadNodeIsDetectedAndItsActorsRestartElsewhere) {
  std::string flags = " --node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"E\": 1}'";
  CommandResult first = run(cli("start --address " + address_ + flags));
  ASSERT_EQ(first.code, 0) << first.out;
  CommandResult second = run(cli("start --address " + address_ + flags));
  ASSERT_EQ(second.code, 0) << second.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(first.out, m, std::regex("gantry node ([0-9a-f]{8}) joined"))) << first.out;
  std::string first_id = m[1].str();
  ASSERT_TRUE(std::regex_search(second.out, m, std::regex("gantry node ([0-9a-f]{8}) joined"))) << second.out;
  std::string second_id = m[1].str();

  gantry::init({.temp_dir = temp_.string(), .address = address_});
  auto tally = gantry::actor(Tally::create).options({.resources = {{"E", 1}}, .max_restarts = 1}).remote(0);
  std::string before = tally.task(&Tally::node).remote().get();
  EXPECT_EQ(before.substr(0, 4) + before.substr(16, 4), first_id);

  pid_t victim = node_pid(first.out);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  std::string status =
      run_until(cli("status"), std::regex(first_id + " +dead"), std::chrono::seconds(10));
  EXPECT_TRUE(std::regex_search(status, std::regex(first_id + " +dead"))) << status;
  // Restarted on the other node that has E, with its state rebuilt by the factory.
  std::string after = tally.task(&Tally::node).remote().get();
  EXPECT_EQ(after.substr(0, 4) + after.substr(16, 4), second_id);
  EXPECT_EQ(tally.task(&Tally::bump).remote().get(), 1);
  std::string actors = run(cli("list actors")).out;
  EXPECT_TRUE(std::regex_search(actors, std::regex("ALIVE .* 1 +job\\n"))) << actors;
  gantry::shutdown();
}

std::string self_exe() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

TEST_F(ClusterTest, NodesWithoutTheProgramFetchItFromTheHeadByDigest) {
  CommandResult node = run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 1 "
                               "--resources '{\"X\": 1}'"));
  ASSERT_EQ(node.code, 0) << node.out;
  // A copy of this program that deletes itself after joining: no node has its file.
  std::filesystem::path copy = temp_ / "orphan" / "orphan_driver";
  std::filesystem::create_directories(copy.parent_path());
  std::filesystem::copy_file(self_exe(), copy, std::filesystem::copy_options::overwrite_existing);
  CommandResult job = run(std::string(GANTRY_CLI_PATH) + " job submit --temp-dir " + temp_.string() + " -- " +
                          copy.string() + " --job-orphan");
  EXPECT_EQ(job.code, 0) << job.out;
  EXPECT_FALSE(std::filesystem::exists(copy));
  std::smatch m;
  ASSERT_TRUE(std::regex_search(job.out, m, std::regex("orphan ran on ([0-9a-f]{32})"))) << job.out;
  EXPECT_EQ(short_id(m[1].str()), joined_id(node.out));
  ASSERT_TRUE(std::regex_search(node.out, m, std::regex("session: (\\S+)"))) << node.out;
  std::ifstream log(m[1].str() + "/logs/gantry.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(std::regex_search(text, std::regex("fetched executable .*orphan_driver .*sha256 [0-9a-f]{12}")))
      << text;
}

TEST_F(ClusterTest, AMissingSharedLibraryIsNamedWithTheNode) {
  CommandResult job = run(std::string(GANTRY_CLI_PATH) + " job submit --temp-dir " + temp_.string() +
                          " --env LD_LIBRARY_PATH=" + PROBE_LIB_DIR + " -- " + NEEDS_PROBE_PATH);
  EXPECT_EQ(job.code, 1) << job.out;
  EXPECT_TRUE(std::regex_search(job.out, std::regex("probe failed: .*on node [0-9a-f]{8} .*needs shared libraries "
                                                    "this node does not have: libgantry_probe\\.so")))
      << job.out;
}

TEST_F(ClusterTest, JobSubmitRunsAProgramAsADriverAndKeepsItsOutput) {
  std::string submit = std::string(GANTRY_CLI_PATH) + " job submit --temp-dir " + temp_.string();
  CommandResult ok = run(submit + " -- " + self_exe() + " --job-main 20 22");
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(ok.out.find("job result: 42"), std::string::npos) << ok.out;
  // A line its worker printed, forwarded to the job's driver and so into the job's log.
  EXPECT_TRUE(std::regex_search(ok.out, std::regex("\\(shout pid=[0-9]+\\) shout: from-a-job"))) << ok.out;
  EXPECT_NE(ok.out.find("SUCCEEDED"), std::string::npos) << ok.out;

  CommandResult bad = run(submit + " -- " + self_exe() + " --job-fail");
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("FAILED: exit code 3"), std::string::npos) << bad.out;

  CommandResult missing = run(submit + " -- /nonexistent/program");
  EXPECT_EQ(missing.code, 1) << missing.out;
  EXPECT_NE(missing.out.find("cannot run /nonexistent/program"), std::string::npos) << missing.out;

  CommandResult started = run(submit + " --no-wait -- " + self_exe() + " --job-sleep");
  ASSERT_EQ(started.code, 0) << started.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(started.out, m, std::regex("(job-[0-9a-f]{8})"))) << started.out;
  std::string id = m[1].str();
  std::string logs = run_until(cli("job logs " + id), std::regex("sleeping"), std::chrono::seconds(10));
  EXPECT_NE(logs.find("sleeping"), std::string::npos) << logs;
  CommandResult stop = run(cli("job stop " + id));
  EXPECT_EQ(stop.code, 0) << stop.out;
  EXPECT_EQ(stop.out, id + " stopped\n");

  std::string list = run(cli("job list")).out;
  EXPECT_TRUE(std::regex_search(list, std::regex("SUCCEEDED +0 .*--job-main 20 22"))) << list;
  EXPECT_TRUE(std::regex_search(list, std::regex("FAILED +3 .*--job-fail"))) << list;
  EXPECT_TRUE(std::regex_search(list, std::regex(id + " +STOPPED"))) << list;
  EXPECT_EQ(run(cli("job logs job-00000000")).code, 1);

  // The drivers those jobs ran are in the head's job table.
  std::string jobs = run(cli("list jobs")).out;
  EXPECT_TRUE(std::regex_search(jobs, std::regex("FINISHED .*cluster_test"))) << jobs;
  std::string nodes = run(cli("list nodes")).out;
  EXPECT_NE(nodes.find("127.0.0.1:"), std::string::npos) << nodes;
  EXPECT_EQ(run(cli("list gizmos")).code, 2);
}

TEST_F(ClusterTest, ListActorsShowsNamedActors) {
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  auto tally = gantry::actor(Tally::create).options({.name = "listed"}).remote(1);
  EXPECT_EQ(tally.task(&Tally::bump).remote().get(), 2);
  std::string actors = run(cli("list actors")).out;
  EXPECT_TRUE(std::regex_search(actors, std::regex("ALIVE +.*listed"))) << actors;
  gantry::shutdown();
}

TEST_F(ClusterTest, ListTasksAndObjectsAskEveryOwner) {
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_EQ(gantry::task(add).remote(1, 2).get(), 3);
  auto big = gantry::put(std::vector<double>(1 << 18, 1.0));  // 2 MiB: shared memory
  auto small = gantry::put(7);
  // They run on several workers at once: the quick `add` of the same shape must not make
  // them queue on one.
  std::vector<gantry::ObjectRef<std::string>> busy;
  // They wait for five arrivals, which only the test's release after the listing makes,
  // so they are in flight however slowly the machine runs.
  std::string meeting = (temp_ / ("list-" + std::to_string(::getpid()))).string();
  for (int i = 0; i < 4; ++i) busy.push_back(gantry::task(meet_where).options({.num_cpus = 1}).remote(meeting, 5));
  auto listed = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::string tasks;
  const std::regex running("SUBMITTED +meet_where");
  do {  // until two of them run (workers may be slow to start)
    tasks = run(cli("list tasks --address " + address_)).out;
  } while (std::distance(std::sregex_iterator(tasks.begin(), tasks.end(), running), std::sregex_iterator()) < 2 &&
           std::chrono::steady_clock::now() < listed);
  std::set<std::string> workers;
  std::regex submitted("SUBMITTED +meet_where +(\\S+)");
  for (auto it = std::sregex_iterator(tasks.begin(), tasks.end(), submitted); it != std::sregex_iterator(); ++it)
    workers.insert((*it)[1].str());
  EXPECT_GE(workers.size(), 2u) << tasks;
  EXPECT_TRUE(std::regex_search(tasks, std::regex("\\badd +1 +0"))) << tasks;
  std::string objects = run(cli("list objects --address " + address_)).out;
  EXPECT_TRUE(std::regex_search(objects, std::regex(big.id().hex() + " +SHARED_MEMORY +2097[0-9]{3} "))) << objects;
  EXPECT_TRUE(std::regex_search(objects, std::regex(small.id().hex() + " +INLINE "))) << objects;
  EXPECT_EQ(run(cli("list tasks --limit 0 --address " + address_)).code, 2);
  for (int i = 0; i < 5; ++i) std::ofstream(meeting + "/release-" + std::to_string(i)) << "go";
  for (auto& r : busy) r.get();
  // Finished tasks are counted per function, though both functions share one shape.
  std::string after = run(cli("list tasks --address " + address_)).out;
  EXPECT_TRUE(std::regex_search(after, std::regex("\\bmeet_where +4 +0"))) << after;
  EXPECT_TRUE(std::regex_search(after, std::regex("\\badd +1 +0"))) << after;
  gantry::shutdown();
}

TEST_F(ClusterTest, WorkSpillsToANodeWithRoomAndObjectsCrossBetweenNodes) {
  CommandResult node =
      run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 2 --resources '{\"S\": 2}'"));
  ASSERT_EQ(node.code, 0) << node.out;
  std::string s_node = joined_id(node.out);
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  std::string here = short_id(gantry::runtime_context().node_id);

  // Each takes two CPUs and waits for the other: the head's node holds one at a time, so
  // the other must spill.
  std::string meeting = (temp_ / ("meet-" + std::to_string(::getpid()))).string();
  auto a = gantry::task(meet_where).options({.num_cpus = 2}).remote(meeting, 2);
  auto b = gantry::task(meet_where).options({.num_cpus = 2}).remote(meeting, 2);
  std::set<std::string> ran = {short_id(a.get()), short_id(b.get())};
  EXPECT_EQ(ran.size(), 2u) << "both ran on one node";

  // Driver (head's node) -> S: a put object as an argument.
  const int n = 1 << 20;  // 8 MiB of doubles
  auto big = gantry::put(ramp(n, 0.5));
  double expected = 0.5 * (double(n) * (n - 1) / 2);
  EXPECT_DOUBLE_EQ(gantry::task(total).options({.resources = {{"S", 1}}}).remote(big).get(), expected);
  // S -> driver: a result made there; and S -> a task on the head's node, by reference.
  auto made = gantry::task(ramp).options({.resources = {{"S", 1}}}).remote(n, 2.0);
  std::vector<double> back = made.get();
  ASSERT_EQ(back.size(), static_cast<size_t>(n));
  EXPECT_EQ(back[12345], 12345 * 2.0);
  auto on_head = gantry::task(total).options({.scheduling = gantry::SchedulingStrategy::node_affinity(
                                                  gantry::runtime_context().node_id)});
  EXPECT_DOUBLE_EQ(on_head.remote(made).get(), 4 * expected);
  // Freed at its owner (the driver), the object leaves both stores: the node that made it
  // (where its file goes to the reuse pool under another name) and the one that pulled it.
  // The same for `big`, put on the head's node and copied to S for `total`.
  std::vector<std::string> freed_files = {made.id().hex(), big.id().hex()};
  made = {};
  big = {};
  auto still_stored = [&freed_files] {
    std::error_code ec;
    for (const auto& dir : std::filesystem::directory_iterator("/dev/shm", ec))
      for (const auto& file : freed_files)
        if (dir.path().filename().string().rfind("gantry_", 0) == 0 && std::filesystem::exists(dir.path() / file, ec))
          return dir.path().string() + "/" + file;
    return std::string();
  };
  auto freed_by = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!still_stored().empty() && std::chrono::steady_clock::now() < freed_by)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(still_stored(), "") << "a freed object is still in a node's store";
  gantry::shutdown();
  // Those crossed as copies between the nodes' stores, not through a shared file.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(node.out, m, std::regex("session: (\\S+)")));
  std::ifstream log(m[1].str() + "/logs/gantry.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(std::regex_search(text, std::regex("pulled object [0-9a-f]+ \\(8.0 MiB\\) from node"))) << text;
}

TEST_F(ClusterTest, AWaitingTaskMovesToANodeThatJoinsWithRoom) {
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  std::string here = gantry::runtime_context().node_id;
  // Only the head's node has GPUs: the first task holds both for 4 s and the second waits
  // for them there...
  auto holder = gantry::task(busy_where).options({.num_gpus = 2}).remote(4000);
  auto waiter = gantry::task(busy_where).options({.num_gpus = 2}).remote(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // ... until a node with two GPUs joins: then it runs there, not after the holder.
  CommandResult node = run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 1 --num-gpus 2"));
  ASSERT_EQ(node.code, 0) << node.out;
  EXPECT_EQ(short_id(waiter.get()), joined_id(node.out));
  EXPECT_EQ(holder.get(), here);
  gantry::shutdown();
  ASSERT_EQ(::kill(node_pid(node.out), SIGKILL), 0);
  std::string id = joined_id(node.out);
  std::string status = run_until(cli("status"), std::regex(id + " +dead"), std::chrono::seconds(10));
  EXPECT_TRUE(std::regex_search(status, std::regex(id + " +dead"))) << status;
}

TEST_F(ClusterTest, SchedulingStrategiesPlaceWorkWhereAsked) {
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  std::vector<gantry::NodeInfo> nodes = gantry::nodes();
  ASSERT_GE(nodes.size(), 2u);
  std::string other;
  for (const auto& n : nodes)
    if (n.alive && n.node_id != gantry::runtime_context().node_id && n.resources.count("CPU")) other = n.node_id;
  ASSERT_FALSE(other.empty());

  // Hard affinity: exactly there, for tasks and actors.
  auto pinned = gantry::SchedulingStrategy::node_affinity(other);
  EXPECT_EQ(gantry::task(busy_where).options({.scheduling = pinned}).remote(0).get(), other);
  auto tally = gantry::actor(Tally::create).options({.scheduling = pinned}).remote(0);
  EXPECT_EQ(tally.task(&Tally::node).remote().get(), other);

  // A node that does not exist: hard fails at once, soft runs anyway.
  std::string nowhere(32, 'f');
  EXPECT_THROW(gantry::task(busy_where)
                   .options({.scheduling = gantry::SchedulingStrategy::node_affinity(nowhere)})
                   .remote(0)
                   .get(),
               gantry::InfeasibleError);
  EXPECT_THROW(gantry::actor(Tally::create)
                   .options({.scheduling = gantry::SchedulingStrategy::node_affinity(nowhere)})
                   .remote(0),
               gantry::InfeasibleError);
  EXPECT_EQ(gantry::task(busy_where)
                .options({.scheduling = gantry::SchedulingStrategy::node_affinity(nowhere, /*soft=*/true)})
                .remote(0)
                .get()
                .size(),
            32u);
  EXPECT_THROW(gantry::task(busy_where).options({.scheduling = gantry::SchedulingStrategy::node_affinity("x")}).remote(0),
               gantry::Error);

  // Spread: consecutive tasks go to different nodes, though the first has room for all.
  std::set<std::string> spread;
  for (int i = 0; i < 4; ++i)
    spread.insert(
        gantry::task(busy_where).options({.num_cpus = 0.5, .scheduling = gantry::SchedulingStrategy::spread()})
            .remote(0)
            .get());
  EXPECT_GE(spread.size(), 2u);
  std::set<std::string> spread_actors;
  for (int i = 0; i < 2; ++i) {
    auto t = gantry::actor(Tally::create).options({.scheduling = gantry::SchedulingStrategy::spread()}).remote(0);
    spread_actors.insert(t.task(&Tally::node).remote().get());
  }
  EXPECT_EQ(spread_actors.size(), 2u);
  gantry::shutdown();
}

TEST_F(ClusterTest, KeysAndCollectiveGroupsSpanNodes) {
  CommandResult node = run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 2 --resources '{\"K\": 2}'"));
  ASSERT_EQ(node.code, 0) << node.out;
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  const std::string here = gantry::runtime_context().node_id;
  // A task on the other node waits for a key this driver puts.
  auto waiter = gantry::task(wait_key).options({.resources = {{"K", 1}}}).remote("cross");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  gantry::kv::put("cross", "over");
  std::string got = waiter.get();
  EXPECT_EQ(got.substr(0, 8), "over on ") << got;
  EXPECT_NE(got.substr(8), here) << "the waiter ran on the other node";
  // Two ranks on two nodes meet through the key-value store and pick gantry's TCP.
  auto remote_rank = gantry::task(allreduce_rank).options({.resources = {{"K", 1}}}).remote("two-nodes", 2, 1);
  EXPECT_EQ(allreduce_rank("two-nodes", 2, 0), "tcp 3 3");
  EXPECT_EQ(remote_rank.get(), "tcp 3 3");
  // Gloo, when asked for, across the two nodes too.
  auto gloo_rank = gantry::task(allreduce_rank).options({.resources = {{"K", 1}}}).remote("gloo-two-nodes", 2, 1);
  EXPECT_EQ(allreduce_rank("gloo-two-nodes", 2, 0), "gloo 3 3");
  EXPECT_EQ(gloo_rank.get(), "gloo 3 3");
  // The job's keys go with the job; the cluster's stay.
  gantry::kv::put("mine", "job");
  gantry::kv::put("ours", "cluster", {.cluster = true});
  gantry::shutdown();
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_EQ(gantry::kv::get("mine"), std::nullopt);
  EXPECT_TRUE(gantry::kv::keys().empty());
  EXPECT_EQ(gantry::kv::get("ours", {.cluster = true}), "cluster");
  gantry::kv::del("ours", {.cluster = true});
  gantry::shutdown();
}

TEST_F(ClusterTest, TwoRanksOnEachOfTwoNodesGoHierarchical) {
  CommandResult node = run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 2 --resources '{\"H\": 2}'"));
  ASSERT_EQ(node.code, 0) << node.out;
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  auto here = gantry::SchedulingStrategy::node_affinity(gantry::runtime_context().node_id);
  std::vector<gantry::ObjectRef<std::string>> ranks;
  ranks.push_back(gantry::task(allreduce_rank).options({.num_cpus = 0.5, .scheduling = here}).remote("2x2", 4, 1));
  ranks.push_back(gantry::task(allreduce_rank).options({.num_cpus = 0.5, .resources = {{"H", 1}}}).remote("2x2", 4, 2));
  ranks.push_back(gantry::task(allreduce_rank).options({.num_cpus = 0.5, .resources = {{"H", 1}}}).remote("2x2", 4, 3));
  // 1 + 2 + 3 + 4
  EXPECT_EQ(allreduce_rank("2x2", 4, 0), "hierarchical 10 10");
  for (auto& r : ranks) EXPECT_EQ(r.get(), "hierarchical 10 10");
  gantry::shutdown();
}

TEST_F(ClusterTest, ABurstOfGpuActorsFillsEveryNodesGpus) {
  // The head's node has 2 GPUs; this one 4. A task that held all 4 a moment ago leaves
  // the head's view of the node stale: actors must still end up wherever GPUs are free,
  // not queue for ever on a full node.
  CommandResult node = run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 1 --num-gpus 4"));
  ASSERT_EQ(node.code, 0) << node.out;
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_EQ(gantry::task(busy_where).options({.num_cpus = 0, .num_gpus = 4}).remote(300).get().size(), 32u);
  std::vector<gantry::ActorHandle<Tally>> actors;
  for (int i = 0; i < 6; ++i) actors.push_back(gantry::actor(Tally::create).options({.num_gpus = 1}).remote(0));
  std::map<std::string, int> per_node;
  for (auto& a : actors) ++per_node[a.task(&Tally::node).remote().get(std::chrono::seconds(30))];
  ASSERT_EQ(per_node.size(), 2u);
  std::set<int> counts;
  for (const auto& [n, c] : per_node) counts.insert(c);
  EXPECT_EQ(counts, (std::set<int>{2, 4}));
  gantry::shutdown();
}

TEST_F(ClusterTest, AGroupFailsWhenAMembersNodeIsDeclaredDead) {
  // A frozen machine closes no sockets: the node's agent and the rank's worker are stopped
  // (SIGSTOP), the head declares the node dead after --node-timeout (2 s), and the
  // communicator's monitor fails the group's op.
  CommandResult node = run(cli("start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"Z\": 1}'"));
  ASSERT_EQ(node.code, 0) << node.out;
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  namespace col = gantry::collective;
  auto peer = gantry::task(allreduce_until_failure).options({.resources = {{"Z", 1}}, .max_retries = 0}).remote("frozen");
  auto comm = col::Communicator::join({.group = "frozen", .world_size = 2, .rank = 0});
  auto pid = gantry::kv::wait("frozen/pid", std::chrono::seconds(30));
  ASSERT_TRUE(pid.has_value());
  std::vector<float> v(1000, 1.0f);
  for (int i = 0; i < 5; ++i) comm.allreduce(std::span<float>(v));
  pid_t agent = node_pid(node.out), worker = std::stoi(*pid);
  ASSERT_EQ(::kill(agent, SIGSTOP), 0);
  ASSERT_EQ(::kill(worker, SIGSTOP), 0);
  auto t0 = std::chrono::steady_clock::now();
  try {
    while (true) comm.allreduce(std::span<float>(v));
  } catch (const col::CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("declared dead"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
  }
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(took, std::chrono::seconds(8)) << "node timeout 2 s plus the monitor's look";
  ::kill(worker, SIGKILL);
  ::kill(agent, SIGKILL);
  ::kill(agent, SIGCONT);
  gantry::shutdown();
}

TEST_F(ClusterTest, TasksOfAKilledNodeRunAgainOnAnother) {
  std::string flags = " --node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"W\": 1}'";
  CommandResult first = run(cli("start --address " + address_ + flags));
  ASSERT_EQ(first.code, 0) << first.out;
  CommandResult second = run(cli("start --address " + address_ + flags));
  ASSERT_EQ(second.code, 0) << second.out;
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  // One on each node (each has one W); then the first node dies mid-task.
  auto a = gantry::task(busy_where).options({.resources = {{"W", 1}}}).remote(2000);
  auto b = gantry::task(busy_where).options({.resources = {{"W", 1}}}).remote(2000);
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  ASSERT_EQ(::kill(node_pid(first.out), SIGKILL), 0);
  EXPECT_EQ(short_id(a.get()), joined_id(second.out));
  EXPECT_EQ(short_id(b.get()), joined_id(second.out));
  gantry::shutdown();
}

TEST_F(ClusterTest, PlacementGroupsSpanNodesAndSurviveANodesDeath) {
  using namespace std::chrono_literals;
  std::string flags = " --node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"P\": 1}'";
  CommandResult first = run(cli("start --address " + address_ + flags));
  ASSERT_EQ(first.code, 0) << first.out;
  CommandResult second = run(cli("start --address " + address_ + flags));
  ASSERT_EQ(second.code, 0) << second.out;
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  using gantry::SchedulingStrategy;
  // Two nodes have a P each: STRICT_SPREAD of two P bundles takes both; of three, none.
  EXPECT_THROW(gantry::create_placement_group({.bundles = {{{"P", 1}}, {{"P", 1}}, {{"P", 1}}},
                                               .strategy = gantry::PlacementStrategy::kStrictSpread}),
               gantry::InfeasibleError);
  auto pg = gantry::create_placement_group({.bundles = {{{"P", 1}, {"CPU", 1}}, {{"P", 1}, {"CPU", 1}}},
                                            .strategy = gantry::PlacementStrategy::kStrictSpread,
                                            .name = "pair"});
  ASSERT_TRUE(pg.wait(20s));
  auto in = [&](int bundle) {
    return gantry::task(busy_where)
        .options({.num_cpus = 1, .resources = {{"P", 1}}, .scheduling = SchedulingStrategy::placement_group(pg, bundle)})
        .remote(0)
        .get(30s);
  };
  std::string at0 = in(0), at1 = in(1);
  EXPECT_NE(at0, at1);
  std::set<std::string> p_nodes{joined_id(first.out), joined_id(second.out)};
  EXPECT_TRUE(p_nodes.count(short_id(at0)) && p_nodes.count(short_id(at1))) << at0 << " " << at1;
  // An actor in a bundle lives on that bundle's node.
  auto tally = gantry::actor(Tally::create)
                   .options({.num_cpus = 1, .scheduling = SchedulingStrategy::placement_group(pg, 1)})
                   .remote(0);
  EXPECT_EQ(tally.task(&Tally::node).remote().get(30s), at1);
  std::string listed = run(cli("list placement-groups --address " + address_)).out;
  EXPECT_NE(listed.find(pg.id()), std::string::npos) << listed;
  EXPECT_NE(listed.find("STRICT_SPREAD"), std::string::npos) << listed;
  EXPECT_NE(listed.find("CREATED"), std::string::npos) << listed;
  EXPECT_NE(listed.find("pair"), std::string::npos) << listed;

  // The node holding bundle 0 dies: the bundle moves to a new node with a P.
  bool first_held_0 = short_id(at0) == joined_id(first.out);
  CommandResult& doomed = first_held_0 ? first : second;
  ASSERT_EQ(::kill(node_pid(doomed.out), SIGKILL), 0);
  CommandResult third = run(cli("start --address " + address_ + flags));
  ASSERT_EQ(third.code, 0) << third.out;
  auto deadline = std::chrono::steady_clock::now() + 30s;
  std::string moved;
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      moved = in(0);
      if (short_id(moved) == joined_id(third.out)) break;
    } catch (const gantry::Error&) {
      // its old node's lease fails while the head notices the death
    }
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_EQ(short_id(moved), joined_id(third.out));
  gantry::remove_placement_group(pg);
  EXPECT_THROW(tally.task(&Tally::node).remote().get(30s), gantry::ActorDiedError);
  gantry::shutdown();
}

TEST_F(ClusterTest, ObjectsOfADeadNodeAreRebuiltFromLineageOrReportedLost) {
  std::string flags = " --node-ip-address 127.0.0.1 --num-cpus 1";
  CommandResult x = run(cli("start --address " + address_ + flags + " --resources '{\"R\": 1, \"L\": 1}'"));
  ASSERT_EQ(x.code, 0) << x.out;
  CommandResult y = run(cli("start --address " + address_ + flags + " --resources '{\"R\": 1}'"));
  ASSERT_EQ(y.code, 0) << y.out;
  std::string x_id = joined_id(x.out);
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  std::string x_full;
  for (const auto& n : gantry::nodes())
    if (short_id(n.node_id) == x_id) x_full = n.node_id;
  ASSERT_FALSE(x_full.empty());

  const int n = 1 << 18;  // 2 MiB: kept in X's store
  // Made from inline arguments: the owner can run it again elsewhere.
  auto rebuildable = gantry::task(ramp)
                         .options({.resources = {{"R", 1}},
                                   .scheduling = gantry::SchedulingStrategy::node_affinity(x_full, /*soft=*/true)})
                         .remote(n, 3.0);
  // Made from another object: no lineage kept, so its loss is final.
  auto base = gantry::put(ramp(n, 1.0));
  auto lost = gantry::task(scale).options({.resources = {{"L", 1}}}).remote(base, 2.0);
  std::vector<gantry::ObjectRef<std::vector<double>>> both = {rebuildable, lost};
  auto [ready, pending] = gantry::wait(both, 2, std::chrono::seconds(30));
  ASSERT_EQ(ready.size(), 2u);

  ASSERT_EQ(::kill(node_pid(x.out), SIGKILL), 0);
  std::string status = run_until(cli("status"), std::regex(x_id + " +dead"), std::chrono::seconds(10));
  ASSERT_TRUE(std::regex_search(status, std::regex(x_id + " +dead"))) << status;

  std::vector<double> rebuilt = rebuildable.get();
  ASSERT_EQ(rebuilt.size(), static_cast<size_t>(n));
  EXPECT_EQ(rebuilt[1000], 3000.0);
  try {
    lost.get();
    ADD_FAILURE() << "an object whose only copy died was read";
  } catch (const gantry::ObjectLostError& e) {
    EXPECT_NE(std::string(e.what()).find(lost.id().hex()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("node " + x_id), std::string::npos) << e.what();
  }
  gantry::shutdown();
}

// Runs last (gtest keeps declaration order): stops the cluster.
TEST_F(ClusterTest, StopEndsThisMachinesGantryProcessesAndNothingElse) {
  // A stray pid file naming a process that is not gantry must not be touched.
  pid_t bystander = ::fork();
  if (bystander == 0) {
    ::execlp("sleep", "sleep", "30", static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  std::filesystem::create_directories(temp_ / "session_fake");
  std::ofstream(temp_ / "session_fake" / "gantry.pid") << bystander << "\n";

  CommandResult stop = run(cli("stop"));
  EXPECT_EQ(stop.code, 0) << stop.out;
  EXPECT_TRUE(std::regex_search(stop.out, std::regex("stopped [1-9][0-9]* gantry process"))) << stop.out;
  EXPECT_EQ(::kill(bystander, 0), 0) << "stop killed a process that is not gantry's";
  ::kill(bystander, SIGKILL);
  ::waitpid(bystander, nullptr, 0);
  CommandResult status = run(cli("status --address " + address_));
  EXPECT_EQ(status.code, 1) << status.out;
  CommandResult again = run(cli("stop"));
  EXPECT_EQ(again.code, 0);
  EXPECT_NE(again.out.find("no gantry processes"), std::string::npos) << again.out;
}

// A cluster started with --tls-cert/--tls-key: every TCP endpoint speaks TLS only.
class TlsClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    temp_ = std::filesystem::path("/tmp") / ("gtls" + std::to_string(::getpid()));
    std::filesystem::create_directories(temp_);
    cert_ = (temp_ / "cert.pem").string();
    key_ = (temp_ / "key.pem").string();
    CommandResult made = run("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=gantry-test -keyout " +
                             key_ + " -out " + cert_ + " -addext subjectAltName=IP:127.0.0.1,DNS:localhost");
    ASSERT_EQ(made.code, 0) << made.out;
    port_ = free_port();
    address_ = "127.0.0.1:" + std::to_string(port_);
    std::string tls = " --tls-cert " + cert_ + " --tls-key " + key_ + " --temp-dir " + temp_.string();
    head_ = run(std::string(GANTRY_CLI_PATH) + " start --head --node-ip-address 127.0.0.1 --num-cpus 1 --port " +
                std::to_string(port_) + tls);
    node_ = run(std::string(GANTRY_CLI_PATH) + " start --address " + address_ +
                " --node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"T\": 1}'" + tls);
  }
  static void TearDownTestSuite() {
    run(std::string(GANTRY_CLI_PATH) + " stop --temp-dir " + temp_.string());
    std::error_code ec;
    std::filesystem::remove_all(temp_, ec);
  }
  static inline std::filesystem::path temp_;
  static inline std::string cert_, key_, address_;
  static inline int port_ = 0;
  static inline CommandResult head_, node_;
};

TEST_F(TlsClusterTest, WorkObjectsAndTheCliRunOverTls) {
  using namespace std::chrono_literals;
  ASSERT_EQ(head_.code, 0) << head_.out;
  ASSERT_EQ(node_.code, 0) << node_.out;
  EXPECT_NE(head_.out.find("--tls-cert CERT --tls-key KEY"), std::string::npos) << head_.out;
  // The head answers a TLS handshake with the cluster's certificate.
  CommandResult hello = run("echo | openssl s_client -connect " + address_ + " -CAfile " + cert_);
  EXPECT_NE(hello.out.find("CN = gantry-test"), std::string::npos) << hello.out;
  EXPECT_NE(hello.out.find("Verify return code: 0 (ok)"), std::string::npos) << hello.out;
  // A driver on this machine finds the TLS files with the token; work crosses to the
  // other node (gRPC task streams over TLS) and an 8 MiB result comes back.
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  EXPECT_EQ(short_id(gantry::task(busy_where).options({.resources = {{"T", 1}}}).remote(0).get(30s)),
            joined_id(node_.out));
  auto far = gantry::task(ramp).options({.resources = {{"T", 1}}}).remote(1 << 20, 1.0);
  EXPECT_DOUBLE_EQ(gantry::task(total).remote(far).get(30s), 0.5 * (1 << 20) * ((1 << 20) - 1));
  auto tally = gantry::actor(Tally::create).options({.resources = {{"T", 1}}}).remote(1);
  EXPECT_EQ(tally.task(&Tally::bump).remote().get(30s), 2);
  // The key-value store works over TLS too, from both nodes.
  gantry::kill(tally);  // it holds the node's one T
  auto waiter = gantry::task(wait_key).options({.resources = {{"T", 1}}}).remote("over-tls");
  gantry::kv::put("over-tls", "sealed");
  EXPECT_EQ(waiter.get(30s).substr(0, 10), "sealed on ");
  // A group across the two nodes works, and says that its data is not encrypted.
  auto remote_rank = gantry::task(allreduce_rank).options({.resources = {{"T", 1}}}).remote("tls-group", 2, 1);
  ::testing::internal::CaptureStderr();
  std::string mine = allreduce_rank("tls-group", 2, 0);
  std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(mine, "tcp 3 3");
  EXPECT_EQ(remote_rank.get(30s), "tcp 3 3");
  EXPECT_NE(said.find("not encrypted"), std::string::npos) << said;
  gantry::shutdown();
  std::string status = run(std::string(GANTRY_CLI_PATH) + " status --temp-dir " + temp_.string()).out;
  EXPECT_TRUE(std::regex_search(status, std::regex(joined_id(node_.out) + " +alive"))) << status;
}

// Two network namespaces joined by a veth pair, each with its own address: the head in
// one, a node in the other, as on two machines. Needs root and `ip netns`.
TEST(NetworkNamespaces, NodesInSeparateNamespacesFormOneCluster) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces";
  std::string tag = std::to_string(::getpid() % 100000);
  std::string a = "gna" + tag, b = "gnb" + tag, va = "gva" + tag, vb = "gvb" + tag;
  if (run("ip netns add " + a).code != 0) GTEST_SKIP() << "ip netns is not available here";
  struct Cleanup {
    std::string a, b, temp;
    ~Cleanup() {
      run(std::string(GANTRY_CLI_PATH) + " stop --temp-dir " + temp);
      run("ip netns del " + a);
      run("ip netns del " + b);
      std::error_code ec;
      std::filesystem::remove_all(temp, ec);
    }
  };
  std::filesystem::path temp = std::filesystem::path("/tmp") / ("gns" + tag);
  std::filesystem::create_directories(temp);
  Cleanup cleanup{a, b, temp.string()};
  std::string setup = "ip netns add " + b + " && ip link add " + va + " type veth peer name " + vb +
                      " && ip link set " + va + " netns " + a + " && ip link set " + vb + " netns " + b +
                      " && ip -n " + a + " addr add 10.211.0.1/24 dev " + va + " && ip -n " + b +
                      " addr add 10.211.0.2/24 dev " + vb + " && ip -n " + a + " link set " + va + " up && ip -n " +
                      b + " link set " + vb + " up && ip -n " + a + " link set lo up && ip -n " + b + " link set lo up";
  CommandResult net = run(setup);
  if (net.code != 0) GTEST_SKIP() << "cannot set up a veth pair between namespaces: " << net.out;
  std::string cli = std::string(GANTRY_CLI_PATH);
  std::string in_a = "ip netns exec " + a + " ", in_b = "ip netns exec " + b + " ";
  std::string common = " --num-cpus 1 --temp-dir " + temp.string();
  CommandResult head = run(in_a + cli + " start --head --node-ip-address 10.211.0.1 --port 6390" + common);
  ASSERT_EQ(head.code, 0) << head.out;
  CommandResult node = run(in_b + cli + " start --address 10.211.0.1:6390 --node-ip-address 10.211.0.2" + common +
                           " --resources '{\"N\": 1}'");
  ASSERT_EQ(node.code, 0) << node.out;
  CommandResult job = run(in_a + cli + " job submit --temp-dir " + temp.string() + " -- " +
                          std::filesystem::read_symlink("/proc/self/exe").string() + " --job-netns");
  EXPECT_EQ(job.code, 0) << job.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(job.out, m, std::regex("netns ok: ([0-9a-f]{32}) 1048576 1048575"))) << job.out;
  EXPECT_EQ(short_id(m[1].str()), joined_id(node.out));
  std::string status = run(in_a + cli + " status --temp-dir " + temp.string()).out;
  EXPECT_NE(status.find("10.211.0.2:"), std::string::npos) << status;
}

}  // namespace

// Programs that `gantry job submit` runs in JobSubmitRunsAProgramAsADriverAndKeepsItsOutput:
// drivers joining the cluster through GANTRY_ADDRESS, which the head sets for them.
int job_main(int argc, char** argv) {
  std::string mode = argv[1];
  if (mode == "--job-fail") return 3;
  if (mode == "--job-netns") {
    // The head's namespace runs this driver; work needing N goes to the other namespace's
    // node, and its 8 MiB result crosses the veth link back.
    gantry::init(argc, argv);
    std::string node = gantry::task(busy_where).options({.resources = {{"N", 1}}}).remote(0).get();
    auto far = gantry::task(ramp).options({.resources = {{"N", 1}}}).remote(1 << 20, 1.0);
    std::vector<double> values = far.get();
    std::cout << "netns ok: " << node << " " << values.size() << " " << static_cast<long long>(values.back()) << std::endl;
    gantry::shutdown();
    return 0;
  }
  if (mode == "--job-orphan") {
    // Remove our own file once joined: the nodes must get the program from the head.
    std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
    gantry::init(argc, argv);
    std::filesystem::remove(exe);
    std::string node = gantry::task(busy_where).options({.resources = {{"X", 1}}}).remote(0).get();
    std::cout << "orphan ran on " << node << std::endl;
    gantry::shutdown();
    return 0;
  }
  gantry::init(argc, argv);
  if (mode == "--job-sleep") {
    std::cout << "sleeping" << std::endl;
    std::this_thread::sleep_for(std::chrono::minutes(5));
    return 0;
  }
  int a = argc > 2 ? std::atoi(argv[2]) : 0, b = argc > 3 ? std::atoi(argv[3]) : 0;
  std::cout << "job result: " << gantry::task(add).remote(a, b).get() << std::endl;
  gantry::task(shout).remote(std::string("from-a-job")).get();
  gantry::shutdown();  // waits for the worker's line to reach us
  return 0;
}

int main(int argc, char** argv) {
  // This executable is also its own worker: in a worker, init serves tasks, never returns.
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  if (argc > 1 && std::string(argv[1]).rfind("--job-", 0) == 0) return job_main(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
