#pragma once

#include <memory>
#include <optional>
#include <string>

#include "gantry/train/config.h"

namespace torch::nn {
class Module;
}
namespace torch::optim {
class Optimizer;
}

namespace gantry::train {

namespace detail {
struct ResumeState;
}

/// A checkpoint: a directory of files (the model and optimizer through `torch::save`,
/// plus anything the loop adds) and its metadata (the epoch, the metrics reported with
/// it). Cheap to copy: copies name the same directory.
///
///     ctx.report(metrics, train::Checkpoint::from_model(*model, opt, epoch));
///     if (auto ck = ctx.checkpoint()) first_epoch = ck->load(*model, opt) + 1;
class Checkpoint {
 public:
  /// A checkpoint of the files in `dir` (kept where they are).
  static Checkpoint from_directory(const std::string& dir);
  /// Saves `model` (and `optimizer`, when given) with `torch::save` into a new temporary
  /// directory, with `epoch` in the metadata. Add files under `path()` before reporting.
  static Checkpoint from_model(const torch::nn::Module& model, const torch::optim::Optimizer* optimizer,
                               int epoch);
  static Checkpoint from_model(const torch::nn::Module& model, const torch::optim::Optimizer& optimizer,
                               int epoch) {
    return from_model(model, &optimizer, epoch);
  }

  /// Loads the model (onto the device of its parameters) and the optimizer saved by
  /// `from_model`, and returns the saved epoch. In a training loop, loaders made by
  /// `prepare_data` then continue at that epoch + 1. Throws gantry::Error when a file is
  /// missing or does not match the model.
  int load(torch::nn::Module& model, torch::optim::Optimizer* optimizer = nullptr) const;
  int load(torch::nn::Module& model, torch::optim::Optimizer& optimizer) const { return load(model, &optimizer); }

  /// The directory holding the files.
  const std::string& path() const { return state_->path; }
  /// The metadata: "epoch" from `from_model`, "metrics" once reported, anything set here.
  const Json& metadata() const { return state_->metadata; }
  void set_metadata(const std::string& key, Json value);
  /// The epoch saved by `from_model`, if any.
  std::optional<int> epoch() const;

  /// The name of the metadata file inside a checkpoint directory.
  static constexpr const char* kMetadataFile = ".gantry_checkpoint.json";

 private:
  struct State {
    std::string path;
    Json metadata;
    bool owns_directory = false;  // a temporary directory removed with the last copy
    std::shared_ptr<detail::ResumeState> resume;  // the training loop's, when restored into one
    ~State();
  };
  explicit Checkpoint(std::shared_ptr<State> state) : state_(std::move(state)) {}
  friend struct CheckpointAccess;

  std::shared_ptr<State> state_;
};

}  // namespace gantry::train
