#include "trial_files.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <unordered_map>

#include "gantry/errors.h"
#include "experiment_log.h"
#include "tfevents_writer.h"

namespace gantry::tune::detail {
namespace {

namespace fs = std::filesystem;

std::string io_error(const std::string& what, const std::string& path, int error) {
  std::string message = "tune: cannot " + what + " " + path;
  if (error != 0) message += ": " + std::string(std::strerror(error));
  return message;
}

void ensure_directory(const std::string& directory) {
  std::error_code ec;
  fs::create_directories(directory, ec);
  if (ec) throw Error("tune: cannot create trial directory " + directory + ": " + ec.message());
}

std::unique_ptr<std::ofstream> open_for_append(const std::string& path) {
  errno = 0;
  auto out = std::make_unique<std::ofstream>(path, std::ios::binary | std::ios::app);
  if (!*out) throw Error(io_error("open", path, errno));
  return out;
}

// Flushing after each write is what makes "a reader sees each result as it comes" true,
// and it is where a full disk shows up.
void flush_or_throw(std::ofstream& out, const std::string& path) {
  errno = 0;
  out.flush();
  if (!out) throw Error(io_error("write", path, errno));
}

// The header of an existing progress.csv: a trial whose files were closed (paused) or
// whose driver restarted goes on with the columns it started with.
std::vector<std::string> read_csv_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<std::string> columns;
  if (!in) return columns;
  std::string field;
  bool quoted = false;
  bool any = false;
  for (char c; in.get(c);) {
    any = true;
    if (quoted) {
      if (c == '"') {
        if (in.peek() == '"') {
          in.get(c);
          field.push_back('"');
        } else {
          quoted = false;
        }
      } else {
        field.push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      columns.push_back(std::move(field));
      field.clear();
    } else if (c == '\n') {
      break;
    } else if (c != '\r') {
      field.push_back(c);
    }
  }
  if (any) columns.push_back(std::move(field));
  return columns;
}

void flatten_into(const Json& object, const std::string& prefix, std::vector<std::pair<std::string, Json>>& out) {
  for (const auto& [key, value] : object.items()) {
    std::string name = prefix.empty() ? key : prefix + "/" + key;
    if (value.is_object()) {
      flatten_into(value, name, out);
    } else if (value.is_number() || value.is_string() || value.is_boolean()) {
      out.emplace_back(std::move(name), value);
    }
  }
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

std::vector<std::pair<std::string, Json>> flatten_metrics(const Json& result) {
  std::vector<std::pair<std::string, Json>> leaves;
  if (result.is_object()) flatten_into(result, "", leaves);
  return leaves;
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted.push_back('"');
    quoted.push_back(c);
  }
  quoted.push_back('"');
  return quoted;
}

std::string csv_value(const Json& value) {
  if (value.is_null()) return "";
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number_float()) {
    double number = value.get<double>();
    // JSON has no spelling for these (nlohmann writes "null"); pandas reads these.
    if (std::isnan(number)) return "nan";
    if (std::isinf(number)) return number > 0 ? "inf" : "-inf";
  }
  return value.dump();
}

const Json* find_flattened(const Json& result, const std::string& key) {
  if (!result.is_object()) return nullptr;
  if (auto it = result.find(key); it != result.end()) return it->is_object() ? nullptr : &*it;
  // Each '/' may separate levels or belong to a key: try every split.
  for (size_t slash = key.find('/'); slash != std::string::npos; slash = key.find('/', slash + 1)) {
    auto it = result.find(key.substr(0, slash));
    if (it == result.end() || !it->is_object()) continue;
    if (const Json* leaf = find_flattened(*it, key.substr(slash + 1))) return leaf;
  }
  return nullptr;
}

TrialFiles::TrialFiles(std::string directory) : directory_(std::move(directory)) {}

TrialFiles::~TrialFiles() { close(); }

void TrialFiles::write_params(const Json& config) {
  ensure_directory(directory_);
  write_file_atomically((fs::path(directory_) / "params.json").string(), config.dump(2) + "\n");
}

void TrialFiles::append_result(const Json& result) {
  std::string json_path = (fs::path(directory_) / "result.json").string();
  std::string csv_path = (fs::path(directory_) / "progress.csv").string();
  if (!json_) {
    ensure_directory(directory_);
    json_ = open_for_append(json_path);
  }
  *json_ << result.dump() << '\n';
  flush_or_throw(*json_, json_path);

  auto leaves = flatten_metrics(result);
  if (!csv_) {
    if (csv_columns_.empty()) csv_columns_ = read_csv_header(csv_path);
    csv_ = open_for_append(csv_path);
  }
  if (csv_columns_.empty() && !leaves.empty()) {
    std::string header;
    for (const auto& [key, value] : leaves) {
      if (!csv_columns_.empty()) header.push_back(',');
      csv_columns_.push_back(key);
      header += csv_field(key);
    }
    *csv_ << header << '\n';
  }
  if (!csv_columns_.empty()) {
    std::unordered_map<std::string, const Json*> by_key;
    for (const auto& [key, value] : leaves) by_key.emplace(key, &value);
    std::string row;
    for (size_t i = 0; i < csv_columns_.size(); ++i) {
      if (i > 0) row.push_back(',');
      if (auto it = by_key.find(csv_columns_[i]); it != by_key.end()) row += csv_field(csv_value(*it->second));
    }
    *csv_ << row << '\n';
  }
  flush_or_throw(*csv_, csv_path);

  ++results_appended_;
  std::vector<std::pair<std::string, double>> scalars;
  for (const auto& [key, value] : leaves) {
    if (value.is_number()) scalars.emplace_back(key, value.get<double>());
    if (value.is_boolean()) scalars.emplace_back(key, value.get<bool>() ? 1.0 : 0.0);
  }
  if (scalars.empty()) return;
  const Json* iteration = find_flattened(result, "training_iteration");
  int64_t step =
      iteration && iteration->is_number() ? static_cast<int64_t>(iteration->get<double>()) : results_appended_;
  const Json* timestamp = find_flattened(result, "timestamp");
  double wall_time = timestamp && timestamp->is_number() ? timestamp->get<double>() : now_seconds();
  if (!events_) events_ = std::make_unique<TfEventsWriter>(directory_);
  events_->add_scalars(step, wall_time, scalars);
}

void TrialFiles::close() {
  json_.reset();
  csv_.reset();
  events_.reset();
}

}  // namespace gantry::tune::detail
