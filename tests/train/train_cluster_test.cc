// Train on clusters started with the `gantry` command: workers on two nodes (ranks, the
// hierarchical collective, checkpoints from every node with no shared directory, a
// restart), the fine_tune example across nodes, and elastic groups that grow when a node
// joins and shrink when one dies. The test binary is also the workers' executable.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "gantry/train.h"
#include "parameter_hash.h"
#include "support/shell.h"

namespace train = gantry::train;
using gantry::train_test::parameter_hash;
namespace fs = std::filesystem;
using gantry::test_support::CommandResult;
using gantry::test_support::free_port;
using gantry::test_support::node_pid;
using gantry::test_support::run;

namespace {

// Every rank trains on its own batches, saves a file of its own in each checkpoint
// (all_ranks), and on the first attempt the last rank SIGKILLs itself after epoch 1.
void two_node_loop(train::TrainContext& ctx) {
  torch::manual_seed(ctx.world_rank());
  auto model = std::make_shared<torch::nn::LinearImpl>(16, 4);
  auto ddp = ctx.prepare_model(model, {.bucket_cap_mb = 0.0001});
  torch::optim::SGD opt(model->parameters(), 0.1);
  int first = 0;
  if (auto ck = ctx.checkpoint()) {
    first = ck->load(*model, opt) + 1;
    // Every rank's file of the checkpoint came back, on whichever node this rank runs.
    for (int r = 0; r < ctx.world_size(); ++r)
      if (!fs::exists(ck->path() + "/rank_" + std::to_string(r) + ".txt")) throw std::runtime_error("missing rank file");
  }
  for (int epoch = first; epoch < 4; ++epoch) {
    for (int step = 0; step < 5; ++step) {
      torch::Generator gen = torch::make_generator<torch::CPUGeneratorImpl>(100 * epoch + 10 * step + ctx.world_rank());
      opt.zero_grad();
      model->forward(torch::randn({8, 16}, gen)).pow(2).mean().backward();
      opt.step();
    }
    if (epoch == 2 && ctx.restart_count() == 0 && ctx.world_rank() == ctx.world_size() - 1) raise(SIGKILL);
    train::Checkpoint ck = train::Checkpoint::from_model(*model, opt, epoch);
    std::ofstream(ck.path() + "/rank_" + std::to_string(ctx.world_rank()) + ".txt") << gantry::runtime_context().node_id;
    ctx.report({{"epoch", epoch},
                {"hash", parameter_hash(*model)},
                {"node", gantry::runtime_context().node_id},
                {"NODE_RANK", std::getenv("NODE_RANK")},
                {"LOCAL_RANK", std::getenv("LOCAL_RANK")},
                {"LOCAL_WORLD_SIZE", std::getenv("LOCAL_WORLD_SIZE")},
                {"MASTER_ADDR", std::getenv("MASTER_ADDR")},
                {"backend", gantry::collective::to_string(ctx.communicator().backend())},
                {"restart_count", ctx.restart_count()}},
               ck, {.all_ranks = true});
  }
}
GANTRY_TRAIN_LOOP(two_node_loop);

// Long enough to be resized twice: one epoch per `epoch_ms`, a checkpoint each.
void elastic_loop(train::TrainContext& ctx) {
  auto model = std::make_shared<torch::nn::LinearImpl>(4, 1);
  auto ddp = ctx.prepare_model(model);
  torch::optim::SGD opt(model->parameters(), 0.01);
  int first = 0;
  if (auto ck = ctx.checkpoint()) first = ck->load(*model, opt) + 1;
  for (int epoch = first; epoch < ctx.config().get<int>("epochs"); ++epoch) {
    opt.zero_grad();
    model->forward(torch::ones({2, 4})).sum().backward();
    opt.step();
    std::this_thread::sleep_for(std::chrono::milliseconds(ctx.config().get<int>("epoch_ms")));
    ctx.report({{"epoch", epoch}, {"world_size", ctx.world_size()}}, train::Checkpoint::from_model(*model, opt, epoch));
  }
}
GANTRY_TRAIN_LOOP(elastic_loop);

// The world sizes in a run's result.json so far, in order.
std::vector<int> world_sizes(const fs::path& run) {
  std::vector<int> out;
  std::ifstream in(run / "result.json");
  std::string line;
  while (std::getline(in, line)) {
    try {
      out.push_back(train::Json::parse(line).at("_world_size").get<int>());
    } catch (const std::exception&) {
    }
  }
  return out;
}

bool wait_until(const std::function<bool()>& done, std::chrono::seconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

class TrainClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    temp_ = fs::path("/tmp") / ("gtc" + std::to_string(::getpid()));
    fs::create_directories(temp_);
    address_ = "127.0.0.1:" + std::to_string(free_port());
  }
  void TearDown() override {
    if (gantry::is_initialized()) gantry::shutdown();
    run(std::string(GANTRY_CLI_PATH) + " stop --temp-dir " + temp_.string());
    std::error_code ec;
    fs::remove_all(temp_, ec);
  }
  CommandResult start_node(bool head, int cpus) {
    std::string role = head ? "--head --port " + address_.substr(address_.find(':') + 1) : "--address " + address_;
    return run(std::string(GANTRY_CLI_PATH) + " start " + role + " --node-ip-address 127.0.0.1 --num-cpus " +
               std::to_string(cpus) + " --node-timeout 2 --temp-dir " + temp_.string());
  }

  fs::path temp_;
  std::string address_;
};

}  // namespace

TEST_F(TrainClusterTest, WorkersOnTwoNodesShareCheckpointsWithoutASharedDirectory) {
  ASSERT_EQ(start_node(true, 2).code, 0);
  ASSERT_EQ(start_node(false, 2).code, 0);
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  train::TrainerOptions o;
  o.scaling = {.num_workers = 4, .resources_per_worker = {{"CPU", 1}}, .placement_strategy = gantry::PlacementStrategy::kSpread};
  o.run = {.name = "two_nodes", .storage_path = (temp_ / "results").string(), .failure = {.max_failures = 1}, .verbose = 0};
  train::Result r = train::TorchTrainer(two_node_loop, o).fit();
  ASSERT_TRUE(r.ok()) << r.error->message;
  ASSERT_EQ(r.worker_metrics.size(), 4u);
  std::set<std::string> nodes;
  std::string hash = r.worker_metrics[0].back()["hash"];
  for (int rank = 0; rank < 4; ++rank) {
    const train::Json& m = r.worker_metrics[rank].back();
    nodes.insert(m["node"].get<std::string>());
    EXPECT_EQ(m["hash"], hash) << "rank " << rank;  // bitwise equal across nodes
    EXPECT_EQ(m["NODE_RANK"], std::to_string(rank / 2));
    EXPECT_EQ(m["LOCAL_RANK"], std::to_string(rank % 2));
    EXPECT_EQ(m["LOCAL_WORLD_SIZE"], "2");
    EXPECT_EQ(m["MASTER_ADDR"], "127.0.0.1");
    EXPECT_EQ(m["backend"], "hierarchical");
    EXPECT_EQ(m["restart_count"], 1);  // the last rank was killed on the first attempt
    EXPECT_EQ(m["epoch"], 3);
  }
  EXPECT_EQ(nodes.size(), 2u);
  // The driver's directory holds every rank's file, written by the driver alone.
  ASSERT_TRUE(r.checkpoint.has_value());
  std::set<std::string> written_on;
  for (int rank = 0; rank < 4; ++rank) {
    std::ifstream in(r.checkpoint->path() + "/rank_" + std::to_string(rank) + ".txt");
    std::string node;
    ASSERT_TRUE(in >> node) << "rank " << rank;
    written_on.insert(node);
  }
  EXPECT_EQ(written_on, nodes);
  EXPECT_TRUE(fs::exists(r.checkpoint->path() + "/model.pt"));
}

TEST_F(TrainClusterTest, FineTuneExampleRunsAcrossTwoNodes) {
#ifndef FINE_TUNE_PATH
  GTEST_SKIP() << "the examples were not built (GANTRY_BUILD_EXAMPLES=OFF)";
#else
  CommandResult head = start_node(true, 1);
  ASSERT_EQ(head.code, 0);
  ASSERT_EQ(start_node(false, 1).code, 0);
  std::smatch session;
  ASSERT_TRUE(std::regex_search(head.out, session, std::regex("session: (\\S+)"))) << head.out;
  // A program joining by address needs the cluster's token, as `gantry start` printed it.
  CommandResult out = run("GANTRY_TOKEN=$(cat " + session[1].str() + "/token) " + FINE_TUNE_PATH + " --address " +
                          address_ + " --epochs 4 2>&1");
  EXPECT_EQ(out.code, 0) << out.out;
  EXPECT_NE(out.out.find("2 workers on 2 node(s)"), std::string::npos) << out.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out.out, m, std::regex("accuracy before ([0-9.]+)%, after ([0-9.]+)%"))) << out.out;
  EXPECT_GT(std::stod(m[2].str()), std::stod(m[1].str()));
#endif
}

TEST_F(TrainClusterTest, ElasticGroupsGrowWhenANodeJoinsAndShrinkWhenItDies) {
  ASSERT_EQ(start_node(true, 2).code, 0);
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  train::TrainerOptions o;
  o.scaling = {.num_workers = {2, 4}, .resources_per_worker = {{"CPU", 1}}};
  o.run = {.name = "elastic", .storage_path = (temp_ / "results").string(), .failure = {.max_failures = -1}, .verbose = 2};
  o.config = {{"epochs", 400}, {"epoch_ms", 50}};
  fs::path run_dir = temp_ / "results" / "elastic";
  train::Result r;
  std::thread driver([&] { r = train::TorchTrainer(elastic_loop, o).fit(); });
  auto has = [&](int size) {
    auto sizes = world_sizes(run_dir);
    return !sizes.empty() && sizes.back() == size;
  };
  bool started_small = wait_until([&] { return has(2); }, std::chrono::seconds(30));
  CommandResult second = start_node(false, 2);
  bool grew = started_small && second.code == 0 && wait_until([&] { return has(4); }, std::chrono::seconds(30));
  if (grew) ::kill(node_pid(second.out), SIGKILL);
  bool shrank = grew && wait_until([&] { return has(2); }, std::chrono::seconds(40));
  driver.join();
  EXPECT_TRUE(started_small) << "no report from 2 workers";
  EXPECT_TRUE(grew) << "the group did not grow to 4 workers when a node joined: " << second.out;
  EXPECT_TRUE(shrank) << "the group did not go on with 2 workers after the node died";
  ASSERT_TRUE(r.ok()) << r.error->message;
  EXPECT_EQ(r.metrics["epoch"], 399);
  // Every epoch was reported; after a resize the run went on from the latest checkpoint.
  std::set<int> epochs;
  for (const auto& m : r.metrics_history) epochs.insert(m["epoch"].get<int>());
  EXPECT_EQ(epochs.size(), 400u);
}

TEST_F(TrainClusterTest, AKilledDriversGroupIsStoppedAndItsRunRestoresOnTheCluster) {
  ASSERT_EQ(start_node(true, 2).code, 0);
  fs::path results = temp_ / "results";
  fs::path run_dir = results / "orphaned";
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execl("/proc/self/exe", "train_cluster_test", "--driver", temp_.c_str(), address_.c_str(), results.c_str(),
          nullptr);
    _exit(127);
  }
  bool checkpointed = wait_until([&] { return fs::exists(run_dir / "checkpoint_000002"); }, std::chrono::seconds(60));
  ::kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(checkpointed) << "the driver made no checkpoints in time";

  // The head notices the driver is gone and ends its job: the group's workers stop and
  // their CPUs come back, so a new driver can restore the run on the same cluster.
  gantry::init({.temp_dir = temp_.string(), .address = address_});
  bool freed = wait_until([&] { return gantry::available_resources()["CPU"] >= 2; }, std::chrono::seconds(20));
  EXPECT_TRUE(freed) << "the killed driver's workers still hold " << 2 - gantry::available_resources()["CPU"]
                     << " CPU(s)";
  train::TorchTrainer trainer = train::TorchTrainer::restore(run_dir.string(), elastic_loop);
  train::Result r = trainer.fit();
  ASSERT_TRUE(r.ok()) << r.error->message;
  EXPECT_EQ(r.metrics["epoch"], 59);
  std::set<int> epochs;
  for (const auto& m : r.metrics_history) epochs.insert(m["epoch"].get<int>());
  EXPECT_EQ(epochs.size(), 60u);
}

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  if (argc == 5 && std::string(argv[1]) == "--driver") {
    // The driver AKilledDriversGroup... kills: a slow run on the cluster at argv[3].
    gantry::init({.temp_dir = argv[2], .address = argv[3]});
    train::TrainerOptions o;
    o.scaling = {.num_workers = 2, .resources_per_worker = {{"CPU", 1}}};
    o.run = {.name = "orphaned", .storage_path = argv[4], .verbose = 0};
    o.config = {{"epochs", 60}, {"epoch_ms", 150}};
    train::TorchTrainer(elastic_loop, o).fit();
    gantry::shutdown();
    return 0;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
