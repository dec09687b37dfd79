#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "gantry/tune/scheduler.h"
#include "progress_reporter.h"

namespace gantry::tune::detail {

/// The experiment's state file, `experiment_state.jsonl`: one JSON event per line,
/// appended as each change happens and never rewritten (ray-project/ray#11233). Each
/// line goes out in one write(2), so a killed driver leaves at most a torn last line,
/// which reading skips and reopening cuts off. Not thread-safe.
class ExperimentLog {
 public:
  /// Opens `file` for appending, creating it; cuts a torn last line off first.
  explicit ExperimentLog(std::string file);
  ~ExperimentLog();
  ExperimentLog(const ExperimentLog&) = delete;
  ExperimentLog& operator=(const ExperimentLog&) = delete;

  /// Appends `event` as one line. Throws gantry::Error when the write fails.
  void append(const Json& event);
  /// Flushes the file to disk (fsync): once per progress interval and at the end of a
  /// sweep (appended events already survive a killed driver in the page cache).
  void sync();

  /// The events of `file` in order. A torn last line is skipped; a malformed line
  /// anywhere else is a gantry::Error naming the file and line.
  static std::vector<Json> read(const std::string& file);

 private:
  std::string file_;
  int fd_ = -1;
};

/// One trial as the events describe it: what `gantry tune status`, the Tuner's driver
/// and a restore agree on.
struct TrialRecord : TrialView {
  int index = 0;
  std::string name;
  std::string directory;  ///< relative to the experiment
  bool from_searcher = true;
  int64_t iteration = 0;  ///< training_iteration of the last result
  double time_total_s = 0;
  int failures = 0;
  std::string node;
  std::string error;
  /// Stored checkpoints (relative directories) with their iteration and score, oldest first.
  struct StoredCheckpoint {
    std::string directory;
    int64_t iteration = 0;
    Json score{};
  };
  std::vector<StoredCheckpoint> checkpoints;
  /// What the scheduler decided at the last result, applied when the run ends:
  /// "" (nothing), "stop", "pause" or "exploit".
  std::string pending_action;
  std::vector<Json> history;
};

/// The trials of an experiment rebuilt from its events (pure, no searcher or scheduler:
/// the Tuner adds those calls around `apply`). Events:
///
///   {"event": "trial", "id", "name", "dir", "config", "from_searcher"}   a trial is created
///   {"event": "start", "id", "iteration"}                                its run starts (RUNNING)
///   {"event": "result", "id", "result", ["node"]}                        it reported (where)
///   {"event": "checkpoint", "id", "dir", "iteration", "score"}           a checkpoint is stored
///   {"event": "checkpoint_deleted", "id", "dir"}                         num_to_keep removed one
///   {"event": "decision", "id", "action", "reason", ["from", "config", "dir"]}  stop/pause/exploit
///   {"event": "end", "id", "status", "how", ["node"], ["error"], ["failure"], ["restart"]}  its run ended
///   {"event": "searcher_finished"}, {"event": "session", "attempt"}, {"event": "finished"}
class ExperimentState : public TrialTable {
 public:
  void apply(const Json& event);

  std::vector<const TrialView*> trials() const override;
  const TrialView* find(const std::string& trial_id) const override;
  TrialRecord* record(const std::string& trial_id);
  /// Every trial in creation order (a deque: pointers stay valid as trials are added).
  const std::deque<TrialRecord>& records() const { return records_; }
  std::deque<TrialRecord>& records() { return records_; }

  bool searcher_finished = false;
  bool finished = false;
  int sessions = 0;
  double last_event_time = 0;

 private:
  std::deque<TrialRecord> records_;
  std::map<std::string, size_t> index_;
};

/// The progress table's rows for the trials of `state`, in creation order.
std::vector<ProgressSnapshot::Trial> progress_rows(const ExperimentState& state);

/// Writes `text` to `file` atomically (a temporary beside it, then rename): readers see
/// the old file or the new one, never half of one. Throws gantry::Error naming the file.
void write_file_atomically(const std::string& file, const std::string& text);
/// Seconds since the Unix epoch (the events' and results' timestamps).
double unix_now();
/// "~/x" with $HOME.
std::string expand_home(const std::string& path);

}  // namespace gantry::tune::detail
