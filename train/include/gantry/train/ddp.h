#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "gantry/collective.h"

namespace gantry::train {

/// How `DistributedDataParallel` synchronises gradients.
struct DdpOptions {
  /// Gradients are averaged in buckets of about this many MiB, each allreduced as soon as
  /// backward has produced all of its gradients. The first bucket (the last layers) is at
  /// most 1 MiB so that communication starts early.
  double bucket_cap_mb = 25;
  /// Parameters that get no gradient in a step (a branch not taken) count as zero. When
  /// false, such a parameter is an error that names it.
  bool find_unused_parameters = false;
  /// Rank 0's buffers (BatchNorm statistics) are copied to every rank at the start and
  /// after every synchronised backward.
  bool broadcast_buffers = true;
};

/// gantry's distributed data parallel wrapper: keeps one module's replicas equal on every
/// rank of a communicator. Parameters and buffers start as rank 0's; each backward's
/// gradients are averaged over the ranks, in buckets (in reverse order of registration)
/// whose allreduce overlaps the rest of backward. Every rank's parameters stay bitwise
/// equal after any number of steps, given the same optimizer on each.
///
/// The module is used as before (`model->forward(x)`, `loss.backward()`); gradients are
/// averaged by hooks on its parameters. Made by `TrainContext::prepare_model`. Not
/// thread-safe: one training loop drives it.
///
///     auto ddp = ctx.prepare_model(model);
///     { auto guard = ddp->no_sync(); loss1.backward(); }  // accumulate locally
///     loss2.backward();                                   // averages loss1 + loss2 grads
class DistributedDataParallel {
 public:
  /// Broadcasts rank 0's parameters and buffers (a collective call: every rank makes it)
  /// and hooks the parameters. `comm` must outlive this object.
  DistributedDataParallel(std::shared_ptr<torch::nn::Module> module, collective::Communicator& comm,
                          DdpOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  torch::nn::Module& module() { return *module_; }
  const std::shared_ptr<torch::nn::Module>& module_ptr() const { return module_; }

  /// While the returned guard lives, backward passes only accumulate gradients locally;
  /// the next backward outside it averages the accumulated sum.
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(DistributedDataParallel* ddp);
    ~NoSyncGuard();
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    DistributedDataParallel* ddp_;  // not owned
    bool previous_;
  };
  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(this); }

  /// Figures of the gradient synchronisation so far.
  struct Stats {
    int64_t synced_backwards = 0;
    /// Seconds backward passes spent waiting for allreduces after their last gradient:
    /// the part of the synchronisation not hidden behind backward.
    double exposed_sync_seconds = 0;
    std::vector<size_t> bucket_bytes;
  };
  Stats stats() const;

  /// The buckets as lists of parameter indices (in registration order), for tests.
  std::vector<std::vector<size_t>> buckets() const;

 private:
  struct Impl;
  std::shared_ptr<torch::nn::Module> module_;
  std::unique_ptr<Impl> impl_;
};

namespace detail {

/// One parameter as bucketing sees it.
struct BucketParam {
  size_t bytes = 0;
  int kind = 0;  ///< parameters of different kinds (dtype and device) never share a bucket
};

/// Groups parameters into buckets, walking them in reverse order of registration (the
/// order backward produces their gradients): a bucket closes when the next parameter is
/// of another kind or would take it past its cap (`first_cap_bytes` for the first,
/// `cap_bytes` after). A parameter larger than the cap has a bucket of its own. Returns
/// indices into `params`.
std::vector<std::vector<size_t>> assign_buckets(const std::vector<BucketParam>& params, size_t cap_bytes,
                                                size_t first_cap_bytes);

}  // namespace detail
}  // namespace gantry::train
