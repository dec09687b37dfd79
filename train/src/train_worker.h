#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "gantry/train/trainer.h"
#include "protocol.h"

namespace gantry::train::detail {

class WorkerRun;

/// The training loop registered under `name`, or null. Thread-safe.
TrainLoop find_train_loop(const std::string& name);
/// The name `loop` was registered under, or empty. Thread-safe.
std::string train_loop_name(TrainLoop loop);

/// The actor of one worker of a run. `run` (the loop: long) and `poll` (the driver
/// collecting reports) overlap, so it is created with max_concurrency 2; both are
/// thread-safe.
class TrainWorker {
 public:
  static TrainWorker* create() { return new TrainWorker(); }

  /// Where this worker runs.
  WorkerInfo info();
  /// A TCP port free on this node now (MASTER_PORT for torchrun-style code).
  int free_port();
  /// Runs the registered loop `start.loop_name` to its end; rethrows what it throws.
  bool run(WorkerStart start, CheckpointFiles checkpoint);
  /// The reports made since the last poll, waiting up to `timeout_ms` for one.
  PollResult poll(int64_t timeout_ms);

 private:
  std::mutex mu_;  // guards run_
  std::condition_variable started_;
  std::shared_ptr<WorkerRun> run_;
};

}  // namespace gantry::train::detail
