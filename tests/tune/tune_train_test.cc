// Sweeps whose trials are whole Train runs (each its own 2-worker group) on the embedded
// cluster. The binary is its own workers: the loop and gantry's Train trial are
// registered in it.

#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "gantry/train.h"
#include "gantry/tune.h"

namespace fs = std::filesystem;
namespace train = gantry::train;
namespace tune = gantry::tune;

namespace {

fs::path storage() {
  static fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("gantry_tune_train_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

// Fits y = 3x - 1 with one linear layer; the learning rate comes from the sweep, the
// epochs from the trainer's own config.
void regression_loop(train::TrainContext& ctx) {
  torch::manual_seed(1);
  auto model = torch::nn::Linear(1, 1);
  auto ddp = ctx.prepare_model(model.ptr());
  torch::optim::SGD opt(model->parameters(), ctx.config().get<double>("lr"));
  int first = 0;
  if (auto ck = ctx.checkpoint()) first = ck->load(*model, opt) + 1;
  torch::Tensor x = torch::linspace(-1, 1, 64).unsqueeze(1);
  torch::Tensor y = 3 * x - 1;
  for (int epoch = first; epoch < ctx.config().get<int>("epochs"); ++epoch) {
    double loss_value = 0;
    for (int step = 0; step < 10; ++step) {
      opt.zero_grad();
      auto loss = torch::mse_loss(model->forward(x), y);
      loss.backward();
      opt.step();
      loss_value = loss.item<double>();
    }
    ctx.report({{"loss", loss_value}, {"epoch", epoch}, {"world_size", ctx.world_size()}},
               train::Checkpoint::from_model(*model, opt, epoch));
  }
}
GANTRY_TRAIN_LOOP(regression_loop);

train::TorchTrainer trainer(int epochs) {
  return train::TorchTrainer(regression_loop, {.scaling = {.num_workers = 2},
                                               .run = {.verbose = 0},
                                               .config = {{"epochs", epochs}, {"lr", 0.001}}});
}

class Cluster : public ::testing::Environment {
 public:
  void SetUp() override { gantry::init({.num_cpus = 4}); }
  void TearDown() override {
    gantry::shutdown();
    std::error_code ec;
    fs::remove_all(storage(), ec);
  }
};

}  // namespace

TEST(TuneTrain, EachTrialIsATwoWorkerTrainRunWithTheTrialsConfigMerged) {
  tune::Tuner tuner(trainer(4), {{"lr", tune::grid_search({0.01, 0.3})}},
                    {.metric = "loss", .mode = tune::kMin},
                    {.name = "train_trials", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 2u);
  EXPECT_EQ(grid.num_errors(), 0u) << (grid.num_errors() > 0 ? *grid.errors()[0]->error : "");
  for (const auto& r : grid) {
    ASSERT_EQ(r.metrics_history.size(), 4u) << r.trial_id;
    EXPECT_EQ(r.metrics["world_size"], 2);
    EXPECT_EQ(r.metrics["epoch"], 3);
    ASSERT_TRUE(r.checkpoint.has_value());
    EXPECT_FALSE(r.checkpoint->files().empty()) << "the run's model file travels with the trial's checkpoint";
  }
  // The larger rate fits the line in four epochs; the smaller one does not.
  EXPECT_DOUBLE_EQ(grid.best_result().config["lr"].get<double>(), 0.3);
  EXPECT_LT(grid.best_result().metrics["loss"].get<double>(), 0.05);
}

TEST(TuneTrain, AStoppedTrialEndsItsWorkerGroup) {
  tune::Tuner tuner(trainer(30), {{"lr", tune::grid_search({0.05, 0.1})}},
                    {.metric = "loss", .mode = tune::kMin},
                    {.name = "train_stopped", .storage_path = storage().string(),
                     .stop = {{"training_iteration", 2}}, .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 2u);
  for (const auto& r : grid) {
    EXPECT_EQ(r.status, tune::TrialStatus::kTerminated);
    EXPECT_EQ(r.metrics["training_iteration"], 2) << r.trial_id;
  }
  // The runs' workers are gone: every CPU is free again.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  double free_cpus = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    free_cpus = gantry::available_resources()["CPU"];
    if (free_cpus >= 4) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(free_cpus, 4);
}

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new Cluster);
  return RUN_ALL_TESTS();
}
