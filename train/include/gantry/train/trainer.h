#pragma once

#include <functional>
#include <memory>
#include <string>

#include "gantry/detail/registry.h"

#include "gantry/train/options.h"
#include "gantry/train/result.h"

namespace gantry::train {

class TrainContext;

/// The function every worker runs.
using TrainLoop = void (*)(TrainContext&);

namespace detail {
bool register_train_loop(const char* name, TrainLoop loop);
class TrainerDriver;
}  // namespace detail

/// Runs a training loop on a group of workers of the cluster: one actor per worker in a
/// placement group, each with its GPU (or CPUs), the torchrun environment, a collective
/// group for gradients, checkpoints and restarts. Register the loop with
/// GANTRY_TRAIN_LOOP.
///
///     train::TorchTrainer trainer(train_loop, {.scaling = {.num_workers = 2},
///                                               .config = {{"lr", 0.01}}});
///     train::Result r = trainer.fit();
class TorchTrainer {
 public:
  TorchTrainer(TrainLoop loop, TrainerOptions options);
  ~TorchTrainer();
  TorchTrainer(TorchTrainer&&) noexcept;
  TorchTrainer& operator=(TorchTrainer&&) noexcept;

  /// Continues the run stored at `path` (a run directory whose driver was killed) from
  /// its last checkpoint, in the same directory. Throws gantry::Error when `path` holds
  /// no run.
  static TorchTrainer restore(const std::string& path, TrainLoop loop);

  /// Trains until every worker's loop returns, or the run fails for good. Errors inside
  /// the run are in `Result::error`; bad options throw gantry::Error before anything
  /// starts.
  Result fit();

  /// The trainer as JSON: its loop's registered name and its options (without
  /// RunConfig::on_report). What another process of the same executable needs to run it
  /// (a sweep's trial actor).
  Json to_json() const;
  /// A trainer from `to_json`'s output, `adjust` applied to its options first. Throws
  /// gantry::Error when the loop is not registered here or the JSON is not a trainer's.
  static TorchTrainer from_json(const Json& spec, const std::function<void(TrainerOptions&)>& adjust = {});

  const TrainerOptions& options() const;
  /// The registered name of the loop.
  const std::string& loop_name() const;

 private:
  std::unique_ptr<detail::TrainerDriver> driver_;
};

}  // namespace gantry::train

/// Registers a training loop `void loop(gantry::train::TrainContext&)` so that workers
/// (started from the same executable) can run it. Once per loop, at namespace scope.
#define GANTRY_TRAIN_LOOP(fn)                                                            \
  [[maybe_unused]] static const bool GANTRY_DETAIL_CAT(gantry_train_loop_, __COUNTER__) = \
      ::gantry::train::detail::register_train_loop(#fn, fn)
