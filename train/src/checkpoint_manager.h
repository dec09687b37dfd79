#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gantry/train/config.h"
#include "gantry/train/options.h"

namespace gantry::train::detail {

/// Which of a run's committed checkpoints stay on disk. Pure bookkeeping (the driver
/// deletes what `add` returns). Not thread-safe.
///
/// With `num_to_keep` N > 0, at most N are kept: the latest always (a restart resumes
/// from it), and the best of the others by `score_attribute` (or the newest, without
/// one). A checkpoint whose metrics lack the score ranks below every scored one.
class CheckpointManager {
 public:
  struct Entry {
    int64_t index = 0;
    std::string path;
    Json metrics = Json::object();
    int64_t iteration = 0;  ///< the report it came with, counted from 1 (0: not known)
  };

  explicit CheckpointManager(CheckpointConfig config) : config_(std::move(config)) {}

  /// Records a new checkpoint (the latest) and returns the ones to delete now.
  std::vector<Entry> add(Entry entry);
  /// The kept checkpoints, oldest first.
  const std::vector<Entry>& kept() const { return kept_; }
  std::optional<Entry> latest() const;
  /// The next checkpoint's index.
  int64_t next_index() const { return next_index_; }

 private:
  std::optional<double> score(const Entry& e) const;
  /// Whether `a` should be kept before `b`.
  bool better(const Entry& a, const Entry& b) const;

  CheckpointConfig config_;
  std::vector<Entry> kept_;
  int64_t next_index_ = 0;
};

}  // namespace gantry::train::detail
