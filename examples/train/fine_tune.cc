// Fine-tuning with gantry::train: a small model is pretrained here (one process, plain
// LibTorch) on two spirals and saved as a checkpoint; then 2 workers — on 2 nodes when the
// cluster has them — fine-tune only its output layer, body frozen, on new data (noisier
// spirals, few samples), starting from that checkpoint. Prints the new data's held-out
// accuracy before and after. With a CUDA LibTorch and GPUs (`--gpu`), the same program
// trains on the GPUs and averages gradients with NCCL.
//
//     fine_tune [--address HOST:PORT] [--gpu] [--epochs N]

#include <filesystem>
#include <iostream>
#include <set>
#include <string>

#include "gantry/train.h"
#include "spirals.h"

namespace train = gantry::train;

namespace {

Spirals new_task_data(int64_t n, uint64_t seed) { return Spirals(n, seed, /*turns=*/1.0, /*noise=*/0.08); }

}  // namespace

void fine_tune_loop(train::TrainContext& ctx) {
  auto model = std::make_shared<SpiralNet>(64);
  std::optional<train::Checkpoint> ck = ctx.checkpoint();
  if (!ck) throw std::runtime_error("fine_tune needs the pretrained checkpoint");
  int first_epoch = 0;
  bool pretrained = ck->metadata().value("pretrained", false);
  // The body keeps its pretrained weights and takes no gradient; only `out` trains.
  for (auto* layer : {&model->fc1, &model->fc2})
    for (auto& p : (*layer)->parameters()) p.set_requires_grad(false);
  torch::optim::SGD opt(model->out->parameters(), torch::optim::SGDOptions(ctx.config().get<double>("lr")).momentum(0.9));
  if (pretrained) {
    ck->load(*model);
    torch::NoGradGuard no_grad;
    model->out->reset_parameters();  // a new head for the new task
  } else {
    first_epoch = ck->load(*model, opt) + 1;  // a restart of this run
  }
  auto ddp = ctx.prepare_model(model);
  auto loader = ctx.prepare_data(new_task_data(512, 11).map(torch::data::transforms::Stack<>()),
                                 {.batch_size = 16, .shuffle = true, .seed = 2});
  Spirals holdout = new_task_data(1024, 12);
  for (int epoch = first_epoch; epoch < ctx.config().get<int>("epochs"); ++epoch) {
    double total = 0;
    int batches = 0;
    for (auto& batch : *loader) {
      opt.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(model->forward(batch.data.to(ctx.device())),
                                                       batch.target.to(ctx.device()));
      loss.backward();
      opt.step();
      total += loss.item<double>();
      ++batches;
    }
    model->to(torch::kCPU);
    double acc = accuracy(*model, holdout);
    model->to(ctx.device());
    ctx.report({{"epoch", epoch}, {"loss", total / batches}, {"accuracy", acc},
                {"node", gantry::runtime_context().node_id.substr(0, 8)}},
               train::Checkpoint::from_model(*model, opt, epoch));
  }
}
GANTRY_TRAIN_LOOP(fine_tune_loop);

int main(int argc, char** argv) {
  gantry::InitOptions init;
  bool gpu = false;
  int epochs = 8;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--address" && i + 1 < argc) init.address = argv[++i];
    else if (a == "--gpu") gpu = true;
    else if (a == "--epochs" && i + 1 < argc) epochs = std::stoi(argv[++i]);
    else if (std::getenv("GANTRY_WORKER") == nullptr) {
      std::cerr << "usage: fine_tune [--address HOST:PORT] [--gpu] [--epochs N]\n";
      return 2;
    }
  }
  try {
    gantry::init(argc, argv, init);  // in a worker process this serves tasks and never returns
  } catch (const std::exception& e) {
    std::cerr << "fine_tune: " << e.what() << "\n";
    return 1;
  }
  int status = 1;
  try {
    // Pretraining: the old task, in this process.
    torch::manual_seed(4);
    auto model = std::make_shared<SpiralNet>(64);
    Spirals old_task(4096, 7);
    torch::optim::Adam pre_opt(model->parameters(), 0.01);
    for (int step = 0; step < 400; ++step) {
      auto idx = torch::randint(0, 4096, {128}, torch::kLong);
      pre_opt.zero_grad();
      torch::nn::functional::cross_entropy(model->forward(old_task.points().index({idx})), old_task.labels().index({idx}))
          .backward();
      pre_opt.step();
    }
    train::Checkpoint pretrained = train::Checkpoint::from_model(*model, nullptr, 0);
    pretrained.set_metadata("pretrained", true);
    Spirals holdout = new_task_data(1024, 12);
    std::cout << "fine_tune: pretrained on the old task: accuracy " << accuracy(*model, old_task) * 100 << "%\n";
    {
      torch::NoGradGuard no_grad;
      model->out->reset_parameters();
    }
    double before = accuracy(*model, holdout);
    std::cout << "fine_tune: the new task's held-out accuracy with a fresh head: "
              << before * 100 << "%\n";

    auto storage = std::filesystem::temp_directory_path() / "gantry_results";
    train::TorchTrainer trainer(
        fine_tune_loop,
        {.scaling = {.num_workers = 2, .use_gpu = gpu, .placement_strategy = gantry::PlacementStrategy::kSpread},
         .run = {.name = "fine_tune", .storage_path = storage.string(), .checkpoint = {.num_to_keep = 1}},
         .config = {{"lr", 0.05}, {"epochs", epochs}},
         .resume_from_checkpoint = pretrained});
    train::Result r = trainer.fit();
    if (r.error) {
      std::cerr << "fine_tune: failed at rank " << r.error->rank << ": " << r.error->message << "\n";
    } else {
      std::set<std::string> nodes;
      for (const auto& per_rank : r.worker_metrics) nodes.insert(per_rank.back().value("node", ""));
      double after = r.metrics.value("accuracy", 0.0);
      std::cout << "fine_tune: 2 workers on " << nodes.size() << " node(s); accuracy before " << before * 100
                << "%, after " << after * 100 << "%\n";
      status = after > before && after > 0.8 ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "fine_tune: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
