#include "progress_reporter.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "trial_files.h"

namespace gantry::tune::detail {
namespace {

constexpr size_t kMaxRows = 20;
constexpr size_t kDefaultWidth = 120;
constexpr size_t kMaxErrorLines = 5;
constexpr size_t kExtraMetricColumns = 2;
constexpr const char* kColumnGap = "  ";

// Results every trial reports (or that the table shows already): not worth an extra column.
const std::set<std::string> kUninformativeMetrics = {"training_iteration",
                                                     "time_total_s",
                                                     "time_this_iter_s",
                                                     "time_since_restore",
                                                     "iterations_since_restore",
                                                     "timestamp",
                                                     "done",
                                                     "pid",
                                                     "hostname",
                                                     "node_ip",
                                                     "node",
                                                     "trial_id",
                                                     "date",
                                                     "experiment_id",
                                                     "checkpoint_dir_name",
                                                     "should_checkpoint",
                                                     "timesteps_total",
                                                     "episodes_total"};

std::string short_value(const Json& value) {
  if (value.is_null()) return "";
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number_float()) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.4g", value.get<double>());
    return text;
  }
  return value.dump();
}

std::string cell(const Json& result, const std::string& key) {
  const Json* leaf = find_flattened(result, key);
  return leaf ? short_value(*leaf) : "";
}

std::string elapsed_text(double seconds) {
  auto total = static_cast<long long>(std::max(0.0, seconds));
  char text[48];
  std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", total / 3600, total / 60 % 60, total % 60);
  return text;
}

std::optional<double> numeric_metric(const Json& result, const std::string& metric) {
  const Json* leaf = find_flattened(result, metric);
  if (!leaf || !leaf->is_number()) return std::nullopt;
  double value = leaf->get<double>();
  if (std::isnan(value)) return std::nullopt;
  return value;
}

// Cuts at `width` bytes without splitting a UTF-8 sequence.
std::string fit(std::string line, size_t width) {
  if (width == 0 || line.size() <= width) return line;
  size_t end = width;
  while (end > 0 && (static_cast<unsigned char>(line[end]) & 0xC0) == 0x80) --end;
  line.resize(end);
  return line;
}

struct Column {
  std::string header;
  std::vector<std::string> cells;
  size_t width() const {
    size_t widest = header.size();
    for (const auto& text : cells) widest = std::max(widest, text.size());
    return widest;
  }
};

std::string format_row(const std::vector<Column>& columns, const std::vector<size_t>& widths, size_t row) {
  std::string line;
  for (size_t c = 0; c < columns.size(); ++c) {
    const std::string& text = row == SIZE_MAX ? columns[c].header : columns[c].cells[row];
    if (c > 0) line += kColumnGap;
    line += text;
    if (c + 1 < columns.size()) line.append(widths[c] - text.size(), ' ');
  }
  return line;
}

size_t table_width(const std::vector<Column>& columns) {
  size_t total = 0;
  for (const auto& column : columns) total += column.width() + 2;
  return total;
}

// Flattened config keys whose values are not the same in every trial, in first-seen order.
std::vector<std::string> varying_config_keys(const std::vector<ProgressSnapshot::Trial>& trials) {
  std::vector<std::string> order;
  std::map<std::string, std::set<std::string>> values;
  std::map<std::string, size_t> present;
  for (const auto& trial : trials) {
    for (const auto& [key, value] : flatten_metrics(trial.config)) {
      if (!values.count(key)) order.push_back(key);
      values[key].insert(value.dump());
      ++present[key];
    }
  }
  std::vector<std::string> varying;
  for (const auto& key : order) {
    if (values[key].size() > 1 || present[key] < trials.size()) varying.push_back(key);
  }
  return varying;
}

std::string config_text(const Json& config) {
  std::string text = "{";
  for (const auto& [key, value] : flatten_metrics(config)) {
    if (text.size() > 1) text += ", ";
    text += key + "=" + short_value(value);
  }
  return text + "}";
}

// The terminal's size when `terminal` output goes to one; the table must fit it, or
// wrapped lines would break the cursor-up redraw.
void terminal_size(size_t& width, size_t& rows) {
  winsize size{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) {
    width = size.ws_col;
    rows = size.ws_row;
  }
}

}  // namespace

ProgressReporter::ProgressReporter(std::ostream& out, bool terminal, int verbose,
                                   std::chrono::milliseconds plain_interval)
    : out_(out), terminal_(terminal), verbose_(verbose), plain_interval_(plain_interval) {}

std::string ProgressReporter::render(const ProgressSnapshot& snapshot, size_t max_rows, size_t width) {
  std::vector<std::string> lines;
  std::string title = "== Status == " + snapshot.experiment;
  title += (snapshot.experiment.empty() ? "" : " | ") + std::string("elapsed ") + elapsed_text(snapshot.elapsed_s);
  if (!snapshot.resources.empty()) title += " | " + snapshot.resources;
  lines.push_back(title);
  if (!snapshot.path.empty()) lines.push_back("Result path: " + snapshot.path);

  const auto& trials = snapshot.trials;
  std::string counts;
  for (auto status : {TrialStatus::kRunning, TrialStatus::kPending, TrialStatus::kPaused, TrialStatus::kTerminated,
                      TrialStatus::kError}) {
    auto n = std::count_if(trials.begin(), trials.end(), [&](const auto& t) { return t.status == status; });
    if (n == 0) continue;
    counts += (counts.empty() ? "" : ", ") + std::to_string(n) + " " + status_name(status);
  }
  lines.push_back("Trials: " + std::to_string(trials.size()) + (counts.empty() ? "" : " (" + counts + ")"));

  if (!snapshot.metric.empty()) {
    const ProgressSnapshot::Trial* best = nullptr;
    double best_value = 0;
    for (const auto& trial : trials) {
      auto value = numeric_metric(trial.last_result, snapshot.metric);
      if (!value) continue;
      bool better = snapshot.mode == kMin ? *value < best_value : *value > best_value;
      if (!best || better) {
        best = &trial;
        best_value = *value;
      }
    }
    if (best) {
      lines.push_back("Best trial: " + best->trial_id + " with " + snapshot.metric + "=" +
                      short_value(Json(best_value)) + " and config " + config_text(best->config));
    }
  }

  if (!trials.empty()) {
    std::vector<const ProgressSnapshot::Trial*> shown;
    for (const auto& trial : trials) {
      if (trial.status == TrialStatus::kRunning) shown.push_back(&trial);
    }
    for (const auto& trial : trials) {
      if (trial.status != TrialStatus::kRunning) shown.push_back(&trial);
    }
    size_t left_out = shown.size() > max_rows ? shown.size() - max_rows : 0;
    shown.resize(shown.size() - left_out);

    auto column_of = [&](std::string header, auto&& text_of) {
      Column column{std::move(header), {}};
      for (const auto* trial : shown) column.cells.push_back(text_of(*trial));
      return column;
    };
    std::vector<Column> columns;
    columns.push_back(column_of("Trial id", [](const auto& t) { return t.trial_id; }));
    columns.push_back(column_of("Status", [](const auto& t) { return std::string(status_name(t.status)); }));
    columns.push_back(column_of("Node", [](const auto& t) { return t.node; }));
    for (const auto& key : varying_config_keys(trials)) {
      columns.push_back(column_of(key, [&](const auto& t) { return cell(t.config, key); }));
    }
    if (!snapshot.metric.empty()) {
      columns.push_back(
          column_of(snapshot.metric, [&](const auto& t) { return cell(t.last_result, snapshot.metric); }));
    }
    columns.push_back(column_of("iter", [](const auto& t) { return cell(t.last_result, "training_iteration"); }));
    columns.push_back(column_of("total time (s)", [](const auto& t) { return cell(t.last_result, "time_total_s"); }));

    std::vector<std::string> extra;
    for (const auto* trial : shown) {
      for (const auto& [key, value] : flatten_metrics(trial->last_result)) {
        if (extra.size() == kExtraMetricColumns) break;
        if (!value.is_number() || key == snapshot.metric || kUninformativeMetrics.count(key) ||
            key.rfind("config/", 0) == 0 || std::find(extra.begin(), extra.end(), key) != extra.end()) {
          continue;
        }
        extra.push_back(key);
      }
    }
    for (const auto& key : extra) {
      Column column = column_of(key, [&](const auto& t) { return cell(t.last_result, key); });
      // Extra metrics only where they fit; the fixed columns are cut at the width instead.
      if (width != 0 && table_width(columns) + column.width() > width) break;
      columns.push_back(std::move(column));
    }

    std::vector<size_t> widths;
    for (const auto& column : columns) widths.push_back(column.width());
    lines.push_back(format_row(columns, widths, SIZE_MAX));
    for (size_t row = 0; row < shown.size(); ++row) lines.push_back(format_row(columns, widths, row));
    if (left_out > 0) lines.push_back("... " + std::to_string(left_out) + " more trials");
  }

  std::vector<const ProgressSnapshot::Trial*> failed;
  for (const auto& trial : trials) {
    if (trial.status == TrialStatus::kError && !trial.error.empty()) failed.push_back(&trial);
  }
  if (!failed.empty()) {
    lines.push_back("Errors:");
    for (size_t i = 0; i < failed.size() && i < kMaxErrorLines; ++i) {
      lines.push_back("  " + failed[i]->trial_id + ": " + failed[i]->error);
    }
    if (failed.size() > kMaxErrorLines) {
      lines.push_back("  ... " + std::to_string(failed.size() - kMaxErrorLines) + " more");
    }
  }

  std::string text;
  for (auto& line : lines) {
    // A line break inside a value (an error message) would break the row count.
    std::replace(line.begin(), line.end(), '\n', ' ');
    while (!line.empty() && line.back() == ' ') line.pop_back();
    text += fit(std::move(line), width) + "\n";
  }
  return text;
}

void ProgressReporter::update(const ProgressSnapshot& snapshot, bool force) {
  if (verbose_ < 1) return;
  if (terminal_) {
    size_t width = kDefaultWidth;
    size_t rows = 0;
    terminal_size(width, rows);
    size_t max_rows = kMaxRows;
    // Header, column titles, "more" and errors take about a dozen lines; a table taller
    // than the screen cannot be redrawn in place.
    if (rows > 0) max_rows = std::min(max_rows, rows > 16 ? rows - 16 : size_t{1});
    std::string table = render(snapshot, max_rows, width);
    std::string frame;
    if (drawn_lines_ > 0) frame = "\x1b[" + std::to_string(drawn_lines_) + "A\x1b[J";
    out_ << frame << table << std::flush;
    drawn_lines_ = std::count(table.begin(), table.end(), '\n');
    return;
  }
  auto now = std::chrono::steady_clock::now();
  bool printed_before = last_plain_ != std::chrono::steady_clock::time_point{};
  if (!force && printed_before && now - last_plain_ < plain_interval_) return;
  last_plain_ = now;
  out_ << render(snapshot, kMaxRows, 0) << '\n' << std::flush;
}

void ProgressReporter::line(int level, const std::string& text) {
  if (verbose_ < 1 || verbose_ < level) return;
  if (terminal_ && drawn_lines_ > 0) {
    out_ << "\x1b[" << drawn_lines_ << "A\x1b[J";
    drawn_lines_ = 0;
  }
  out_ << text << '\n' << std::flush;
}

void ProgressReporter::finish(const ProgressSnapshot& snapshot) {
  if (verbose_ < 1) return;
  if (terminal_ && drawn_lines_ > 0) out_ << "\x1b[" << drawn_lines_ << "A\x1b[J";
  drawn_lines_ = 0;
  out_ << render(snapshot, std::numeric_limits<size_t>::max(), 0) << std::flush;
}

}  // namespace gantry::tune::detail
