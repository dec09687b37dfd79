#pragma once

#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include <torch/torch.h>

#include "gantry/collective.h"
#include "gantry/train/checkpoint.h"
#include "gantry/train/config.h"
#include "gantry/train/data.h"
#include "gantry/train/ddp.h"

namespace gantry::train {

/// Where a run's files go.
struct StorageInfo {
  /// `RunConfig::storage_path`, expanded, on the driver's machine.
  std::string storage_path;
  /// The run's directory there (checkpoints, result.json).
  std::string run_path;
  /// A directory on this worker's node for scratch files; removed with the worker.
  std::string local_path;
};

/// How `TrainContext::report` treats a checkpoint.
struct ReportOptions {
  /// Every rank's checkpoint files are kept (sharded state), merged into one directory;
  /// ranks must use distinct file names. By default only rank 0's are kept, and other
  /// ranks' checkpoints are ignored.
  bool all_ranks = false;
};

namespace detail {
class WorkerRun;
}

/// What a training loop knows about its worker and the run: its ranks, its device, the
/// config, the latest checkpoint; and what it does through it: prepare the model and the
/// data, and report. One per worker; used from the loop's thread.
class TrainContext {
 public:
  explicit TrainContext(detail::WorkerRun* run) : run_(run) {}

  int world_rank() const;
  int local_rank() const;
  int world_size() const;
  int local_world_size() const;
  /// This worker's node among the run's nodes (0 is rank 0's node).
  int node_rank() const;
  /// This worker's GPU (`use_gpu` with a CUDA LibTorch and a GPU), else the CPU.
  torch::Device device() const;
  /// The run's collective group (every worker is a member), for the loop's own collectives.
  collective::Communicator& communicator();
  const std::string& run_name() const;
  const StorageInfo& storage() const;
  const Config& config() const;
  /// How many times the group has restarted (TORCHELASTIC_RESTART_COUNT).
  int restart_count() const;

  /// The checkpoint the run resumes from (the latest one reported before a restart, or
  /// `TorchTrainer::restore`'s), on this worker's node; nullopt on a fresh start.
  std::optional<Checkpoint> checkpoint();

  /// Moves `model` to `device()`, makes it rank 0's on every rank, and averages its
  /// gradients from now on (the context keeps the wrapper alive for the run). A
  /// collective call: every rank makes it, in the same order.
  template <typename M>
  std::shared_ptr<DistributedDataParallel> prepare_model(std::shared_ptr<M> model, DdpOptions options = {}) {
    static_assert(std::is_base_of_v<torch::nn::Module, M>, "prepare_model takes a torch::nn::Module");
    model->to(device());
    return make_ddp(std::static_pointer_cast<torch::nn::Module>(model), options);
  }
  /// For module holders (torch::nn::Linear, torch::nn::Sequential, ...).
  template <typename M>
  std::shared_ptr<DistributedDataParallel> prepare_model(torch::nn::ModuleHolder<M>& model, DdpOptions options = {}) {
    return prepare_model(model.ptr(), options);
  }

  /// A loader over this rank's shard of `dataset` (see DistributedLoader).
  template <typename Dataset>
  std::unique_ptr<DistributedLoader<Dataset>> prepare_data(Dataset dataset, DataOptions options = {}) {
    return std::make_unique<DistributedLoader<Dataset>>(std::move(dataset), world_rank(), world_size(), options,
                                                        resume_state());
  }

  /// Reports this step's metrics, and a checkpoint. Every rank calls it the same number
  /// of times: it waits for all of them, and fails with gantry::Error naming the ranks
  /// that did not arrive within `RunConfig::report_timeout`. Rank 0's metrics are the
  /// run's; every rank's are kept. The checkpoint is committed to the run's storage on the
  /// driver's machine and kept by score.
  void report(const Json& metrics, std::optional<Checkpoint> checkpoint = std::nullopt, ReportOptions options = {});

 private:
  std::shared_ptr<DistributedDataParallel> make_ddp(std::shared_ptr<torch::nn::Module> module, DdpOptions options);
  std::shared_ptr<detail::ResumeState> resume_state();

  detail::WorkerRun* run_;  // not owned: the worker's run outlives the loop
};

}  // namespace gantry::train
