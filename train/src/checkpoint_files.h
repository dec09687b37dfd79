#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "protocol.h"

namespace gantry::train::detail {

/// A checkpoint directory as a value: every regular file under `dir` but the metadata
/// file, by relative path, and the metadata file's text (empty when it has none). Throws
/// gantry::Error when a file cannot be read.
CheckpointFiles read_checkpoint_files(const std::filesystem::path& dir);

/// Writes one checkpoint file at `dir` / `rel`, creating its directories. Throws
/// gantry::Error when it cannot.
void write_checkpoint_file(const std::filesystem::path& dir, const std::string& rel, const std::vector<uint8_t>& bytes);

}  // namespace gantry::train::detail
