#pragma once

#include <cstdint>
#include <iosfwd>
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
  /// Appends one result to result.json, progress.csv and the events file. Keys that the
  /// first result lacked are not added to progress.csv (its header is written once); they
  /// are in result.json and the events. Throws gantry::Error naming the file it could not
  /// write (disk full, unwritable directory).
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
  int64_t results_appended_ = 0;  ///< the events' step when a result has no training_iteration
};

/// Numeric, string and boolean leaves of a JSON object, keys joined by '/', in order.
std::vector<std::pair<std::string, Json>> flatten_metrics(const Json& result);
/// One CSV field: quoted when it holds a comma, a quote or a line break.
std::string csv_field(const std::string& text);
/// A leaf as CSV text, before csv_field: numbers in full precision ("nan", "inf", "-inf"
/// spelled out), strings as they are, booleans "true"/"false", null empty, others as JSON.
std::string csv_value(const Json& value);
/// The leaf of `result` at the flattened `key` ("a/b" is result["a"]["b"]; a top-level
/// key holding '/' is found too), or null when there is none.
const Json* find_flattened(const Json& result, const std::string& key);

}  // namespace gantry::tune::detail
