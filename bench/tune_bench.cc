// Tune figures (issue 13), each next to a baseline measured in the same run:
//   - overhead: 100 trivial trials (read the config, one report) as actors in worker
//     processes, with the default options (trial files on, actors reused); beside it the
//     same without trial files, the same with a fresh actor per trial (Ray's
//     reuse_actors=False), and 100 trivial gantry tasks one after another (the floor of
//     doing anything 100 times through worker processes);
//   - search quality: TPE against random search on Branin, Hartmann-6 and Rosenbrock-4,
//     100 sequential trials per seed over 20 seeds, in-process (searchers only: this
//     measures where they look, not the cluster);
//   - early stopping: ASHA against FIFO on synthetic learning curves given in closed form,
//     each step sleeping a fixed time; the time from fit() until some trial reports a loss
//     within 1% of the best final loss any sampled config can reach. Median over seeds.
//
//     gantry_tune_bench            # every figure, about two and a half minutes on 2 cores
//     gantry_tune_bench --quick    # small versions (the smoke test)
//
// Output: one `NAME VALUE` line per figure; lines starting with '#' are comments (date,
// commit, setup, the figures per seed). Speed never fails the run.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "gantry/gantry.h"
#include "source_commit.h"
#include "gantry/tune.h"
#include "tune_search_quality.h"

namespace fs = std::filesystem;
namespace tune = gantry::tune;
using tune::Json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// ---- overhead ------------------------------------------------------------------------

void trivial_trial(tune::TrialContext& t) { t.report({{"score", t.config().get<double>("a")}}); }
GANTRY_TRAINABLE(trivial_trial);

int trivial_task(int x) { return x + 1; }
GANTRY_REMOTE(trivial_task);

double sweep_seconds(int trials, bool files, const fs::path& storage, bool reuse = true) {
  tune::Tuner tuner(trivial_trial, {{"a", tune::uniform(0, 1)}},
                    {.metric = "score", .mode = tune::kMax, .num_samples = trials, .reuse_actors = reuse},
                    {.storage_path = storage.string(), .verbose = 0, .trial_files = files});
  auto start = Clock::now();
  tune::ResultGrid grid = tuner.fit();
  double s = seconds_since(start);
  if (static_cast<int>(grid.num_terminated()) != trials) {
    std::cerr << "tune_bench: only " << grid.num_terminated() << " of " << trials << " trivial trials ended\n";
  }
  return s;
}

void overhead(int trials, const fs::path& storage) {
  // Warm the worker pool once so neither side pays the first process starts alone.
  gantry::task(trivial_task).remote(0).get();
  auto start = Clock::now();
  for (int i = 0; i < trials; ++i) gantry::task(trivial_task).remote(i).get();
  double tasks = seconds_since(start);
  sweep_seconds(4, false, storage);
  double with_files = sweep_seconds(trials, true, storage);
  double without_files = sweep_seconds(trials, false, storage);
  double without_reuse = sweep_seconds(trials, true, storage, /*reuse=*/false);
  start = Clock::now();
  for (int i = 0; i < trials; ++i) gantry::task(trivial_task).remote(i).get();
  std::printf("# the same tasks after the sweeps: %.3f s\n", seconds_since(start));
  std::printf("# %d trials, default options (trial files on, actors reused), CPUs as the cluster has\n", trials);
  std::printf("tune_%d_trivial_trials_s %.3f\n", trials, with_files);
  std::printf("tune_%d_trivial_trials_no_trial_files_s %.3f\n", trials, without_files);
  std::printf("tune_%d_trivial_trials_no_actor_reuse_s %.3f\n", trials, without_reuse);
  std::printf("baseline_%d_sequential_trivial_tasks_s %.3f\n", trials, tasks);
  std::printf("# target: tune_100_trivial_trials_s <= 1 s (Ray reports 22.7 s, ray-project/ray#11004)\n");
}

// ---- early stopping ------------------------------------------------------------------

// A config's learning curve in closed form: it falls to its final loss `a` (best near
// x = 0.3, y = 0.6) exactly at max_t, from a start that y also moves, so early losses
// rank configs roughly, not exactly. Only the best config's last steps (or a config as
// good within 1%) reach the target.
double curve_loss(double x, double y, int step, int max_t) {
  double a = (x - 0.3) * (x - 0.3) + (y - 0.6) * (y - 0.6);
  double left = 1.0 - static_cast<double>(step) / max_t;
  return a + 0.3 * (1 + 0.5 * y) * left * left;
}

void synthetic_curve(tune::TrialContext& t) {
  double x = t.config().get<double>("x");
  double y = t.config().get<double>("y");
  int max_t = t.config().get<int>("max_t");
  auto step_time = std::chrono::milliseconds(t.config().get<int>("step_ms"));
  for (int step = 1; step <= max_t; ++step) {
    std::this_thread::sleep_for(step_time);
    t.report({{"loss", curve_loss(x, y, step, max_t)}, {"step", step}});
  }
}
GANTRY_TRAINABLE(synthetic_curve);

// Seconds from the sweep's start until a result within 1% of the best final loss of the
// sampled configs; infinity when the sweep never got there (the best configs were all
// stopped early).
double time_to_target(const tune::ResultGrid& grid, double started_unix, int max_t) {
  double best = 1e300;
  for (const auto& r : grid) best = std::min(best, curve_loss(r.config["x"], r.config["y"], max_t, max_t));
  double first = 1e300;
  for (const auto& r : grid) {
    for (const Json& m : r.metrics_history) {
      if (m["loss"].get<double>() <= best * 1.01) first = std::min(first, m["timestamp"].get<double>());
    }
  }
  return first >= 1e300 ? std::numeric_limits<double>::infinity() : first - started_unix;
}

double early_stopping_run(bool asha, uint64_t seed, int trials, int max_t, int step_ms, const fs::path& storage) {
  std::shared_ptr<tune::TrialScheduler> scheduler = tune::FIFO();
  if (asha) {
    scheduler = tune::ASHA({.time_attr = "step", .max_t = static_cast<double>(max_t), .grace_period = 1,
                            .reduction_factor = 3, .seed = seed});
  }
  tune::Tuner tuner(synthetic_curve,
                    {{"x", tune::uniform(0, 1)}, {"y", tune::uniform(0, 1)}, {"max_t", max_t}, {"step_ms", step_ms}},
                    {.metric = "loss", .mode = tune::kMin, .num_samples = trials,
                     .search_alg = tune::RandomSearch(seed), .scheduler = scheduler},
                    {.storage_path = storage.string(), .verbose = 0, .trial_files = false});
  double started = unix_now();
  tune::ResultGrid grid = tuner.fit();
  return time_to_target(grid, started, max_t);
}

void early_stopping(int seeds, int trials, int max_t, int step_ms, const fs::path& storage) {
  std::vector<double> asha, fifo;
  for (int seed = 1; seed <= seeds; ++seed) {
    double f = early_stopping_run(false, static_cast<uint64_t>(seed), trials, max_t, step_ms, storage);
    double a = early_stopping_run(true, static_cast<uint64_t>(seed), trials, max_t, step_ms, storage);
    std::printf("# seed %d: asha %.2f s, fifo %.2f s\n", seed, a, f);
    std::fflush(stdout);
    asha.push_back(a);
    fifo.push_back(f);
  }
  double a = median(asha), f = median(fifo);
  std::printf("# %d trials of up to %d steps of %d ms, ASHA grace 1, reduction 3; medians over %d seeds\n", trials,
              max_t, step_ms, seeds);
  std::printf("asha_time_to_target_s %.3f\n", a);
  std::printf("fifo_time_to_target_s %.3f\n", f);
  std::printf("# fifo / asha = %.2f (target >= 3)\n", f / a);
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  gantry::init({.log_to_driver = false});
  fs::path storage = fs::temp_directory_path() / ("gantry_tune_bench_" + std::to_string(::getpid()));
  std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("# gantry_tune_bench, %s, commit %s, %.0f CPUs\n", date, gantry::bench::source_commit().c_str(),
              gantry::cluster_resources()["CPU"]);
  std::fflush(stdout);
  overhead(quick ? 20 : 100, storage);
  std::fflush(stdout);
  gantry::bench::print_search_quality(quick ? 30 : 100, quick ? 3 : 20, std::cout);
  std::cout.flush();
  early_stopping(quick ? 1 : 5, quick ? 8 : 100, quick ? 9 : 27, quick ? 5 : 10, storage);
  std::error_code ec;
  fs::remove_all(storage, ec);
  gantry::shutdown();
  return 0;
}
