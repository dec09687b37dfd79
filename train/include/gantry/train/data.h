#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace gantry::train {

/// How a dataset is split over ranks and batched.
struct DataOptions {
  int64_t batch_size = 1;
  /// Reshuffle every epoch from `seed` (the same permutation on every rank).
  bool shuffle = true;
  uint64_t seed = 0;
  /// With false, the last ranks' shards are padded with samples from the start of the
  /// permutation so every rank gets the same count; with true the remainder is dropped.
  bool drop_last = false;
};

/// The indices rank `rank` of `world_size` reads in `epoch`, for a dataset of `size`
/// samples: the epoch's permutation (seeded by `seed` and `epoch`; the identity without
/// `shuffle`), padded or cut to a multiple of `world_size`, then every world_size-th
/// index starting at `rank`. The ranks' shards are disjoint and together cover the data
/// set (with padding, a few samples twice). Pure and deterministic on every platform.
std::vector<size_t> shard_indices(size_t size, int rank, int world_size, int64_t epoch, const DataOptions& options);

/// A sampler for LibTorch's own data loaders (`torch::data::make_data_loader(dataset,
/// sampler, options)`) giving this rank's shard. `reset()` starts the next epoch, as a
/// loader does at each pass; `set_epoch` fixes it.
class DistributedSampler : public torch::data::samplers::Sampler<> {
 public:
  DistributedSampler(size_t size, int rank, int world_size, DataOptions options);

  void set_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }
  /// Samples per epoch on this rank.
  size_t shard_size() const;

  void reset(c10::optional<size_t> new_size = c10::nullopt) override;
  c10::optional<std::vector<size_t>> next(size_t batch_size) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  size_t size_;
  int rank_;
  int world_size_;
  DataOptions options_;
  int64_t epoch_ = -1;  // reset() before the first pass makes it 0
  bool epoch_fixed_ = false;
  std::vector<size_t> indices_;
  size_t position_ = 0;
};

namespace detail {

/// What a run's loaders share with its context: which epoch comes next after a
/// checkpoint load, and how many samples were read (for samples/s).
struct ResumeState {
  std::optional<int64_t> loaded_epoch;
  int64_t samples_read = 0;
};

}  // namespace detail

/// Batches of this rank's shard of `Dataset` (any LibTorch dataset: one whose
/// `get_batch` takes indices, e.g. `MyDataset().map(torch::data::transforms::Stack<>())`).
/// Each `for` pass over it is the next epoch; after `Checkpoint::load` in the loop, the
/// first pass is the loaded epoch + 1. Made by `TrainContext::prepare_data`.
///
///     for (auto& batch : *loader) { auto out = model->forward(batch.data); ... }
template <typename Dataset>
class DistributedLoader {
 public:
  using Batch = decltype(std::declval<Dataset&>().get_batch(std::declval<c10::ArrayRef<size_t>>()));

  DistributedLoader(Dataset dataset, int rank, int world_size, DataOptions options,
                    std::shared_ptr<detail::ResumeState> resume = nullptr)
      : dataset_(std::move(dataset)), rank_(rank), world_size_(world_size), options_(options),
        resume_(std::move(resume)) {
    auto n = dataset_.size();
    if (!n.has_value()) throw std::invalid_argument("gantry::train::DistributedLoader needs a dataset of known size");
    size_ = *n;
    if (options_.batch_size < 1) throw std::invalid_argument("gantry::train::DataOptions::batch_size must be at least 1");
  }

  /// Makes the next pass read `epoch`.
  void set_epoch(int64_t epoch) { next_epoch_ = epoch; }
  /// The epoch of the current (or last) pass; -1 before the first.
  int64_t epoch() const { return epoch_; }
  /// Batches per epoch on this rank.
  size_t size() const {
    size_t n = shard_indices(size_, rank_, world_size_, 0, DataOptions{options_.batch_size, false, 0, options_.drop_last}).size();
    return (n + static_cast<size_t>(options_.batch_size) - 1) / static_cast<size_t>(options_.batch_size);
  }
  Dataset& dataset() { return dataset_; }

  class iterator {
   public:
    iterator() = default;
    explicit iterator(DistributedLoader* loader) : loader_(loader) { advance(); }
    Batch& operator*() { return *loader_->current_; }
    Batch* operator->() { return &*loader_->current_; }
    iterator& operator++() {
      advance();
      return *this;
    }
    bool operator==(const iterator& other) const { return loader_ == other.loader_; }
    bool operator!=(const iterator& other) const { return loader_ != other.loader_; }

   private:
    void advance() {
      if (!loader_->next_batch()) loader_ = nullptr;
    }
    DistributedLoader* loader_ = nullptr;  // null: the end
  };

  /// Starts a pass: the next epoch.
  iterator begin() {
    if (next_epoch_.has_value()) {
      epoch_ = *next_epoch_;
      next_epoch_.reset();
    } else if (epoch_ < 0 && resume_ != nullptr && resume_->loaded_epoch.has_value()) {
      epoch_ = *resume_->loaded_epoch + 1;
    } else {
      ++epoch_;
    }
    indices_ = shard_indices(size_, rank_, world_size_, epoch_, options_);
    position_ = 0;
    return iterator(this);
  }
  iterator end() { return iterator(); }

 private:
  bool next_batch() {
    if (position_ >= indices_.size()) {
      current_.reset();
      return false;
    }
    size_t n = std::min(indices_.size() - position_, static_cast<size_t>(options_.batch_size));
    current_.emplace(dataset_.get_batch(c10::ArrayRef<size_t>(indices_.data() + position_, n)));
    position_ += n;
    if (resume_ != nullptr) resume_->samples_read += static_cast<int64_t>(n);
    return true;
  }

  Dataset dataset_;
  int rank_;
  int world_size_;
  DataOptions options_;
  std::shared_ptr<detail::ResumeState> resume_;
  size_t size_ = 0;
  int64_t epoch_ = -1;
  std::optional<int64_t> next_epoch_;
  std::vector<size_t> indices_;
  size_t position_ = 0;
  std::optional<Batch> current_;
};

}  // namespace gantry::train
