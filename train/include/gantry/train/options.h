#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "gantry/options.h"
#include "gantry/train/checkpoint.h"
#include "gantry/train/config.h"

namespace gantry::train {

/// How many workers a run uses: a fixed number (`.num_workers = 4`) or an elastic range
/// (`.num_workers = {2, 4}`: start once `min` fit, grow to `max` as room appears, shrink
/// instead of failing when a node dies).
struct WorkerCount {
  WorkerCount(int n = 1) : min(n), max(n) {}  // NOLINT: implicit from a number
  WorkerCount(int min_workers, int max_workers) : min(min_workers), max(max_workers) {}
  bool elastic() const { return min != max; }
  int min;
  int max;
};

/// Where and on what the workers run.
struct ScalingConfig {
  WorkerCount num_workers = 1;
  /// One GPU per worker. On a cluster without GPUs (or with a LibTorch built without
  /// CUDA) the same loop runs on CPUs: `ctx.device()` is then the CPU.
  bool use_gpu = false;
  /// Resources of each worker's bundle; CPU defaults to 1. Each worker's BLAS and
  /// LibTorch thread pools are sized to its CPUs.
  std::map<std::string, double> resources_per_worker{};
  /// How the workers' bundles are laid out over nodes.
  PlacementStrategy placement_strategy = PlacementStrategy::kPack;
};

/// Whether a lower or higher score is better.
enum ScoreOrder { kMin, kMax };

/// Which checkpoints a run keeps.
struct CheckpointConfig {
  /// Keep this many checkpoints (the best by `score_attribute`, or the latest when it
  /// is empty), plus always the latest; 0 keeps all.
  int num_to_keep = 0;
  /// A metric reported with each checkpoint, e.g. "loss".
  std::string score_attribute{};
  ScoreOrder score_order = kMax;
};

/// How a run survives failures.
struct FailureConfig {
  /// Times the worker group restarts from the latest checkpoint after a worker dies or
  /// throws; -1 restarts forever. Elastic resizes count too.
  int max_failures = 0;
};

/// Name, storage and policies of a run.
struct RunConfig {
  /// The run's directory under `storage_path`; empty picks "train_<date>_<time>".
  std::string name{};
  /// Where runs are stored, on the driver's machine ("~" expands). Workers on other
  /// nodes send their checkpoints here through the object store: no shared file system.
  std::string storage_path = "~/gantry_results";
  CheckpointConfig checkpoint{};
  FailureConfig failure{};
  /// 0: quiet; 1: one line per report and a summary (the default); 2: also the group's
  /// state changes.
  int verbose = 1;
  /// How long `report` waits for the slowest rank before failing with an error that
  /// names it.
  std::chrono::milliseconds report_timeout = std::chrono::minutes(10);
  /// Called in the driver after each report of the run (rank 0's metrics, and the
  /// checkpoint it committed, if any); returning false ends the run there: the workers
  /// are stopped and fit() returns the result so far, without an error. A sweep runs a
  /// trainer as a trial this way. Not stored with the run (restore does not keep it).
  ///
  ///     .on_report = [](const train::Json& m, const auto&) { return m["loss"] > 0.01; }
  std::function<bool(const Json& metrics, const std::optional<Checkpoint>& checkpoint)> on_report{};
};

/// Everything `TorchTrainer` takes.
struct TrainerOptions {
  ScalingConfig scaling{};
  RunConfig run{};
  Config config{};
  /// A checkpoint the run starts from when it has none of its own (a pretrained model to
  /// fine-tune, a run to continue under a new name): every worker's `ctx.checkpoint()`
  /// gives it until the run commits one.
  std::optional<Checkpoint> resume_from_checkpoint{};
};

}  // namespace gantry::train
