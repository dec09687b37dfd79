#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "gantry/collective.h"
#include "gantry/train/context.h"
#include "gantry/train/trainer.h"
#include "protocol.h"
#include "train_worker.h"

namespace gantry::train::detail {

/// One worker's part of a run: its ranks, its communicator, the checkpoint it resumes
/// from, and the reports its loop made that the driver has not collected yet. The loop's
/// thread runs `run` (and, through TrainContext, everything else but `poll`); the
/// driver's `poll` calls run on another thread of the actor. `poll` is thread-safe.
class WorkerRun {
 public:
  WorkerRun(WorkerStart start, CheckpointFiles checkpoint);
  ~WorkerRun();

  /// Sets the environment, joins the group and runs `loop` to its end (rethrowing).
  void run(TrainLoop loop);
  /// The reports made since the last poll; waits up to `timeout` for one, or the end.
  PollResult poll(std::chrono::milliseconds timeout);

  const WorkerStart& start() const { return start_; }
  torch::Device device() const { return device_; }
  collective::Communicator& communicator();
  const Config& config() const { return config_; }
  const StorageInfo& storage() const { return storage_; }
  std::optional<Checkpoint> checkpoint();
  const std::shared_ptr<ResumeState>& resume_state() const { return resume_; }
  void report(const Json& metrics, std::optional<Checkpoint> checkpoint, ReportOptions options);
  /// Keeps a prepared model's wrapper alive for the run: gradients stay synchronised even
  /// when the loop drops the handle `prepare_model` returned.
  void keep(std::shared_ptr<DistributedDataParallel> ddp) { models_.push_back(std::move(ddp)); }

 private:
  void set_environment() const;
  void wait_for_every_rank(int64_t index);

  WorkerStart start_;
  CheckpointFiles restored_files_;
  Config config_;
  StorageInfo storage_;
  torch::Device device_ = torch::kCPU;
  std::optional<collective::Communicator> comm_;
  std::shared_ptr<ResumeState> resume_ = std::make_shared<ResumeState>();
  std::optional<Checkpoint> restored_;  // materialised on first use
  std::vector<std::shared_ptr<DistributedDataParallel>> models_;
  int64_t next_report_ = 0;
  int64_t samples_reported_ = 0;

  std::mutex mu_;  // guards the two below
  std::condition_variable changed_;
  std::deque<ReportRecord> unsent_;
  bool finished_ = false;
};

}  // namespace gantry::train::detail
