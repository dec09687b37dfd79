#pragma once

#include <memory>
#include <string>

#include "gantry/train/checkpoint.h"

namespace gantry::train {

/// The library's access to a checkpoint's internals.
struct CheckpointAccess {
  static Checkpoint make(std::string path, Json metadata, bool owns_directory,
                         std::shared_ptr<detail::ResumeState> resume) {
    auto state = std::make_shared<Checkpoint::State>();
    state->path = std::move(path);
    state->metadata = std::move(metadata);
    state->owns_directory = owns_directory;
    state->resume = std::move(resume);
    return Checkpoint(std::move(state));
  }
};

/// A new empty directory under the system's temporary directory, named `prefix-XXXXXX`.
std::string make_temp_directory(const std::string& prefix);

}  // namespace gantry::train
