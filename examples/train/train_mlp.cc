// Distributed data-parallel training of a small classifier (two spirals) with
// gantry::train: 2 CPU workers by default, each with its shard of the data, gradients
// averaged over the workers, a checkpoint per epoch. Prints the loss as it falls and the
// accuracy at the end.
//
//     train_mlp [--workers N] [--epochs N] [--lr X] [--quiet]

#include <cstring>
#include <iostream>
#include <string>

#include "gantry/train.h"
#include "spirals.h"

namespace train = gantry::train;

void train_loop(train::TrainContext& ctx) {
  torch::manual_seed(1);  // rank 0's initial weights are everyone's anyway
  auto model = std::make_shared<SpiralNet>(64);
  auto ddp = ctx.prepare_model(model);
  auto loader = ctx.prepare_data(Spirals(4096).map(torch::data::transforms::Stack<>()),
                                 {.batch_size = 64, .shuffle = true, .seed = 1});
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(ctx.config().get<double>("lr")).momentum(0.9));
  int first_epoch = 0;
  if (auto ck = ctx.checkpoint()) first_epoch = ck->load(*model, opt) + 1;
  Spirals holdout(1024, /*seed=*/99);
  for (int epoch = first_epoch; epoch < ctx.config().get<int>("epochs"); ++epoch) {
    double total = 0;
    int batches = 0;
    for (auto& batch : *loader) {
      opt.zero_grad();
      torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(batch.data), batch.target);
      loss.backward();
      opt.step();
      total += loss.item<double>();
      ++batches;
    }
    ctx.report({{"epoch", epoch}, {"loss", total / batches}, {"accuracy", accuracy(*model, holdout)}},
               train::Checkpoint::from_model(*model, opt, epoch));
  }
}
GANTRY_TRAIN_LOOP(train_loop);

int main(int argc, char** argv) {
  gantry::init(argc, argv);  // in a worker process this serves tasks and never returns
  int workers = 2;
  int epochs = 12;
  double lr = 0.05;
  int verbose = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--workers") workers = std::stoi(value());
      else if (a == "--epochs") epochs = std::stoi(value());
      else if (a == "--lr") lr = std::stod(value());
      else if (a == "--quiet") verbose = 0;
      else throw std::invalid_argument("unknown argument " + a);
    } catch (const std::exception& e) {
      std::cerr << "train_mlp: " << e.what() << "\nusage: train_mlp [--workers N] [--epochs N] [--lr X] [--quiet]\n";
      gantry::shutdown();
      return 2;
    }
  }
  int status = 1;
  try {
    train::TorchTrainer trainer(
        train_loop, {.scaling = {.num_workers = workers, .resources_per_worker = {{"CPU", 1}}},
                     .run = {.name = "train_mlp",
                             .storage_path = (std::filesystem::temp_directory_path() / "gantry_results").string(),
                             .checkpoint = {.num_to_keep = 2, .score_attribute = "loss", .score_order = train::kMin},
                             .failure = {.max_failures = 2},
                             .verbose = verbose},
                     .config = {{"lr", lr}, {"epochs", epochs}}});
    train::Result r = trainer.fit();
    if (r.error) {
      std::cerr << "train_mlp: training failed at rank " << r.error->rank << ": " << r.error->message << "\n";
    } else {
      double acc = r.metrics.value("accuracy", 0.0);
      std::cout << "train_mlp: " << workers << " workers, final loss " << r.metrics.value("loss", 0.0)
                << ", held-out accuracy " << acc * 100 << "%\n";
      status = acc > 0.9 ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "train_mlp: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
