#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gantry/config.h"

namespace gantry::tune::detail {

class TfEventsWriter;

/// A trial's result files in its directory: params.json (its config), result.json (one
/// JSON object per line, one line per result), progress.csv (the numeric and string
/// metrics of each result, the columns fixed by its first result, nested keys joined by
/// '/') and TensorBoard events (every numeric metric as a scalar at training_iteration).
/// Each result is appended and flushed as it comes; nothing is rewritten. Files are
/// opened on first use and kept open. Not thread-safe.
class TrialFiles {
 public:
  explicit TrialFiles(std::string directory);
  ~TrialFiles();

  /// Writes params.json (atomically: write then rename).
  void write_params(const Json& config);
  /// Appends one result to result.json, progress.csv and the events file.
  void append_result(const Json& result);
  /// Closes the files (a paused or ended trial holds no descriptors).
  void close();
  const std::string& directory() const { return directory_; }

 private:
  std::string directory_;
  std::unique_ptr<std::ofstream> json_;
  std::unique_ptr<std::ofstream> csv_;
  std::vector<std::string> csv_columns_;
  std::unique_ptr<TfEventsWriter> events_;
};

/// Numeric, string and boolean leaves of a JSON object, keys joined by '/', in order.
std::vector<std::pair<std::string, Json>> flatten_metrics(const Json& result);
/// One CSV field: quoted when it holds a comma, a quote or a line break.
std::string csv_field(const std::string& text);

}  // namespace gantry::tune::detail
