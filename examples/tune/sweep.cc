// A hyperparameter sweep with gantry::tune: 50 trials of a model whose loss curve is
// given in closed form (so it needs no data and no LibTorch), drawn at random over a grid
// of two widths and cut early by ASHA, as many at a time as the cluster has CPUs. Each step sleeps a little
// to stand in for training. Prints the live table and the best trial.
//
//     sweep [--samples N] [--storage DIR] [--restore DIR]
//
// Kill it (Ctrl-C) half way and run it again with --restore DIR/sweep: finished trials
// are kept, the others go on from their checkpoints.

#include <chrono>
#include <cmath>
#include <iostream>
#include <string>
#include <thread>

#include "gantry/gantry.h"
#include "gantry/tune.h"

namespace tune = gantry::tune;

// The loss a model with these hyperparameters would reach after `step` steps: best near
// lr = 0.01, three layers, width 128, dropout 0.2; a bad learning rate converges slowly.
double loss_at(const tune::Config& c, int step) {
  double lr = c.get<double>("lr");
  double quality = std::pow(std::log10(lr) + 2, 2) + 0.1 * std::abs(c.get<int>("layers") - 3) +
                   (c.get<int>("width") == 128 ? 0 : 0.05) + std::pow(c.get<double>("dropout") - 0.2, 2);
  double speed = 5 + 40 * std::abs(std::log10(lr) + 2);
  return 0.1 + quality + std::exp(-step / speed);
}

void objective(tune::TrialContext& t) {
  int start = 0;
  if (auto ck = t.checkpoint()) start = ck->read<int>("step") + 1;  // resume, or a PBT clone
  for (int step = start; step < 100; ++step) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    t.report({{"loss", loss_at(t.config(), step)}, {"step", step}}, tune::Checkpoint::with("step", step));
    // The scheduler may stop the trial at a report: report() then ends the trial.
  }
}
GANTRY_TRAINABLE(objective);

int main(int argc, char** argv) {
  gantry::init(argc, argv);  // in a worker process this serves trials and never returns
  int samples = 50;
  std::string storage = "~/gantry_results";
  std::string restore;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--samples") {
      samples = std::stoi(argv[i + 1]);
    } else if (flag == "--storage") {
      storage = argv[i + 1];
    } else if (flag == "--restore") {
      restore = argv[i + 1];
    } else {
      std::cerr << "unknown flag " << flag << " (use --samples N, --storage DIR, --restore DIR)\n";
      return 2;
    }
  }
  try {
    bool gpus = gantry::cluster_resources()["GPU"] > 0;
    tune::Tuner tuner =
        restore.empty()
            ? tune::Tuner(objective,
                          {{"lr", tune::loguniform(1e-4, 1e-1)},
                           {"layers", tune::choice({2, 3, 4})},
                           {"width", tune::grid_search({64, 128})},
                           {"dropout", tune::quniform(0.0, 0.5, 0.05)}},
                          {.metric = "loss",
                           .mode = tune::kMin,
                           .num_samples = samples / 2,  // times the two widths of the grid
                           .search_alg = tune::BasicVariant({.seed = 1}),
                           .scheduler = tune::ASHA({.time_attr = "step", .max_t = 100, .grace_period = 1,
                                                    .reduction_factor = 4}),
                           .resources_per_trial = {.num_cpus = 1, .num_gpus = gpus ? 0.25 : 0}},
                          {.name = "sweep", .storage_path = storage})
            : tune::Tuner::restore(restore, objective);
    tune::ResultGrid grid = tuner.fit();
    const tune::Result& best = grid.best_result();
    std::cout << "best trial " << best.trial_id << ": loss " << best.metrics["loss"] << " with " << best.config.dump()
              << "\n"
              << grid.num_terminated() << " trials ended, " << grid.num_errors() << " failed; files in "
              << grid.experiment_path() << "\n";
  } catch (const gantry::Error& e) {
    std::cerr << "sweep: " << e.what() << "\n";
    return 1;
  }
  gantry::shutdown();
  return 0;
}
