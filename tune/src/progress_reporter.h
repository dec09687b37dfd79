#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "gantry/tune/scheduler.h"
#include "gantry/tune/searcher.h"

namespace gantry::tune::detail {

/// What the progress table shows: the experiment and its trials, in creation order.
struct ProgressSnapshot {
  std::string experiment;
  std::string path;
  std::string metric;  ///< may be empty: no "best" line then
  Mode mode = kMin;
  double elapsed_s = 0;
  /// Resources used by running trials and the cluster's totals, e.g. "4/8 CPU, 1/2 GPU".
  std::string resources;
  struct Trial {
    std::string trial_id;
    TrialStatus status = TrialStatus::kPending;
    Json config{};      ///< the trial's sampled values (flattened for columns)
    Json last_result{}; ///< null before the first
    std::string node;   ///< where it runs or ran
    std::string error;  ///< one line, for ERROR trials
  };
  std::vector<Trial> trials;
};

/// Renders the live table: counts by status, the best trial so far with its config, and
/// the trials (running first, then the rest; at most `max_rows`, saying how many are
/// left out) with their varying config values and last metrics. On a terminal it
/// redraws in place (cursor up, clear to end); otherwise it prints the table as plain
/// lines, at most every `plain_interval`. Not thread-safe.
class ProgressReporter {
 public:
  ProgressReporter(std::ostream& out, bool terminal, int verbose,
                   std::chrono::milliseconds plain_interval = std::chrono::seconds(30));

  /// Redraws (terminal) or prints (plain, when the interval passed or `force`). Nothing
  /// at verbose 0.
  void update(const ProgressSnapshot& snapshot, bool force = false);
  /// A line for a trial event (started, ended, failed, exploited): printed at verbose
  /// >= `level`, above the table on a terminal.
  void line(int level, const std::string& text);
  /// The final table, always printed in full as plain lines (verbose >= 1).
  void finish(const ProgressSnapshot& snapshot);

  /// The table as text, `width` columns wide at most (0: no limit), each line ending in
  /// '\n' (the status command prints it).
  static std::string render(const ProgressSnapshot& snapshot, size_t max_rows, size_t width);

 private:
  std::ostream& out_;
  bool terminal_;
  int verbose_;
  std::chrono::milliseconds plain_interval_;
  std::chrono::steady_clock::time_point last_plain_{};
  size_t drawn_lines_ = 0;  ///< lines of the table on screen now (terminal)
};

}  // namespace gantry::tune::detail
