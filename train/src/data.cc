#include "gantry/train/data.h"

#include <numeric>
#include <stdexcept>
#include <string>

namespace gantry::train {
namespace {

// splitmix64: a small generator whose output is the same on every platform, unlike the
// distributions of <random>.
uint64_t next_random(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<size_t> shard_indices(size_t size, int rank, int world_size, int64_t epoch, const DataOptions& options) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw std::invalid_argument("shard_indices: rank " + std::to_string(rank) + " is not in a world of " +
                                std::to_string(world_size));
  }
  std::vector<size_t> order(size);
  std::iota(order.begin(), order.end(), size_t{0});
  if (options.shuffle && size > 1) {
    uint64_t state = options.seed * 0x2545f4914f6cdd1dULL + static_cast<uint64_t>(epoch) + 1;
    for (size_t i = size - 1; i > 0; --i) {
      size_t j = static_cast<size_t>(next_random(state) % (i + 1));
      std::swap(order[i], order[j]);
    }
  }
  size_t world = static_cast<size_t>(world_size);
  size_t total = options.drop_last ? size / world * world : (size + world - 1) / world * world;
  if (total > size) {
    // Pad with the permutation's first samples (again from the start if the data set is
    // smaller than the padding).
    size_t missing = total - size;
    for (size_t i = 0; i < missing; ++i) order.push_back(order[i % size]);
  } else {
    order.resize(total);
  }
  std::vector<size_t> mine;
  mine.reserve(total / world);
  for (size_t i = static_cast<size_t>(rank); i < total; i += world) mine.push_back(order[i]);
  return mine;
}

DistributedSampler::DistributedSampler(size_t size, int rank, int world_size, DataOptions options)
    : size_(size), rank_(rank), world_size_(world_size), options_(options) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw std::invalid_argument("DistributedSampler: rank " + std::to_string(rank) + " is not in a world of " +
                                std::to_string(world_size));
  }
}

void DistributedSampler::set_epoch(int64_t epoch) {
  epoch_ = epoch;
  epoch_fixed_ = true;
  indices_ = shard_indices(size_, rank_, world_size_, epoch_, options_);
  position_ = 0;
}

size_t DistributedSampler::shard_size() const {
  size_t world = static_cast<size_t>(world_size_);
  return options_.drop_last ? size_ / world : (size_ + world - 1) / world;
}

void DistributedSampler::reset(c10::optional<size_t> new_size) {
  if (new_size.has_value()) size_ = *new_size;
  if (epoch_fixed_) {
    epoch_fixed_ = false;  // set_epoch chose this pass's epoch
  } else {
    ++epoch_;
  }
  indices_ = shard_indices(size_, rank_, world_size_, epoch_, options_);
  position_ = 0;
}

c10::optional<std::vector<size_t>> DistributedSampler::next(size_t batch_size) {
  if (position_ >= indices_.size()) return c10::nullopt;
  size_t n = std::min(batch_size, indices_.size() - position_);
  std::vector<size_t> batch(indices_.begin() + static_cast<std::ptrdiff_t>(position_),
                            indices_.begin() + static_cast<std::ptrdiff_t>(position_ + n));
  position_ += n;
  return batch;
}

void DistributedSampler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("epoch", torch::tensor(epoch_, torch::kInt64), /*is_buffer=*/true);
  archive.write("position", torch::tensor(static_cast<int64_t>(position_), torch::kInt64), true);
}

void DistributedSampler::load(torch::serialize::InputArchive& archive) {
  torch::Tensor epoch = torch::empty({}, torch::kInt64);
  torch::Tensor position = torch::empty({}, torch::kInt64);
  archive.read("epoch", epoch, /*is_buffer=*/true);
  archive.read("position", position, true);
  epoch_ = epoch.item<int64_t>();
  indices_ = shard_indices(size_, rank_, world_size_, epoch_, options_);
  position_ = static_cast<size_t>(position.item<int64_t>());
}

}  // namespace gantry::train
