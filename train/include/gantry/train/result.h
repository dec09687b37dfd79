#pragma once

#include <optional>
#include <string>
#include <vector>

#include "gantry/train/checkpoint.h"
#include "gantry/train/config.h"

namespace gantry::train {

/// Why a run failed: the last failure of its worker group.
struct TrainingFailure {
  int rank = -1;          ///< the failing worker's world rank (-1: not one worker's fault)
  std::string node_id{};  ///< where it ran
  std::string message{};  ///< the remote exception (type and message) or the death
  int attempts = 0;       ///< how many times the group started
};

/// The outcome of `TorchTrainer::fit`.
struct Result {
  /// Rank 0's last reported metrics (empty when nothing was reported).
  Json metrics = Json::object();
  /// The latest checkpoint, in the run's directory.
  std::optional<Checkpoint> checkpoint{};
  /// The kept checkpoints with their metrics, oldest first.
  std::vector<Checkpoint> best_checkpoints{};
  /// The run's directory.
  std::string path{};
  /// Set when the run failed (max_failures exhausted).
  std::optional<TrainingFailure> error{};
  /// Every report of rank 0, in order.
  std::vector<Json> metrics_history{};
  /// Every rank's reports: worker_metrics[rank][i].
  std::vector<std::vector<Json>> worker_metrics{};

  bool ok() const { return !error.has_value(); }
};

}  // namespace gantry::train
