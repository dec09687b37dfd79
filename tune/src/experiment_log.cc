#include "experiment_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gantry/errors.h"

namespace gantry::tune::detail {
namespace fs = std::filesystem;

namespace {

std::string read_whole(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error("cannot read " + file + ": " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TrialStatus status_from(const std::string& name) {
  if (name == "RUNNING") return TrialStatus::kRunning;
  if (name == "PAUSED") return TrialStatus::kPaused;
  if (name == "TERMINATED") return TrialStatus::kTerminated;
  if (name == "ERROR") return TrialStatus::kError;
  return TrialStatus::kPending;
}

}  // namespace

ExperimentLog::ExperimentLog(std::string file) : file_(std::move(file)) {
  if (fs::exists(file_)) {
    // A driver killed mid-write leaves a line without its newline: cut it off so the
    // next event starts on a line of its own.
    std::string text = read_whole(file_);
    size_t keep = text.rfind('\n');
    keep = keep == std::string::npos ? 0 : keep + 1;
    if (keep != text.size()) fs::resize_file(file_, keep);
  }
  fd_ = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error("cannot open " + file_ + " for appending: " + std::strerror(errno));
}

ExperimentLog::~ExperimentLog() {
  if (fd_ >= 0) ::close(fd_);
}

void ExperimentLog::append(const Json& event) {
  std::string line = event.dump(-1, ' ', false, Json::error_handler_t::replace);
  line += '\n';
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("cannot append to " + file_ + ": " + std::strerror(errno));
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void ExperimentLog::sync() { ::fsync(fd_); }

std::vector<Json> ExperimentLog::read(const std::string& file) {
  std::string text = read_whole(file);
  std::vector<Json> events;
  size_t pos = 0;
  int line_number = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    ++line_number;
    if (end == std::string::npos) break;  // torn last line: the write that was cut off
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.empty()) continue;
    try {
      events.push_back(Json::parse(line));
    } catch (const Json::exception& e) {
      throw Error(file + " line " + std::to_string(line_number) + " is not a JSON event (" + e.what() +
                  "); the experiment's state is damaged there");
    }
  }
  return events;
}

void ExperimentState::apply(const Json& event) {
  const std::string type = event.value("event", "");
  if (event.contains("time")) last_event_time = event["time"].get<double>();
  if (type == "session") {
    ++sessions;
    return;
  }
  if (type == "searcher_finished") {
    searcher_finished = true;
    return;
  }
  if (type == "finished") {
    finished = true;
    return;
  }
  const std::string id = event.value("id", "");
  if (type == "trial") {
    TrialRecord t;
    t.trial_id = id;
    t.index = static_cast<int>(records_.size());
    t.name = event.value("name", id);
    t.directory = event.value("dir", t.name);
    t.config = event.value("config", Json::object());
    t.from_searcher = event.value("from_searcher", true);
    t.status = TrialStatus::kPending;
    index_[id] = records_.size();
    records_.push_back(std::move(t));
    return;
  }
  TrialRecord* t = record(id);
  if (t == nullptr) return;  // an event of a trial the log does not hold: nothing to change
  if (auto node = event.find("node"); node != event.end() && node->is_string() && !node->empty()) {
    t->node = node->get<std::string>();
  }
  if (type == "start") {
    t->status = TrialStatus::kRunning;
    t->pending_action.clear();
    t->error.clear();
    if (event.contains("iteration")) t->iteration = event["iteration"].get<int64_t>();
  } else if (type == "result") {
    const Json& r = event.at("result");
    t->last_result = r;
    t->iteration = r.value("training_iteration", t->iteration + 1);
    t->time_total_s = r.value("time_total_s", t->time_total_s);
    t->history.push_back(r);
  } else if (type == "checkpoint") {
    t->checkpoints.push_back({event.at("dir").get<std::string>(), event.value("iteration", int64_t{0}),
                              event.value("score", Json())});
    t->has_checkpoint = true;
    t->checkpoint_iteration = t->checkpoints.back().iteration;
  } else if (type == "checkpoint_deleted") {
    const std::string dir = event.at("dir").get<std::string>();
    std::erase_if(t->checkpoints, [&](const TrialRecord::StoredCheckpoint& c) { return c.directory == dir; });
    t->has_checkpoint = !t->checkpoints.empty();
    t->checkpoint_iteration = t->has_checkpoint ? t->checkpoints.back().iteration : 0;
  } else if (type == "decision") {
    t->pending_action = event.value("action", "");
    if (t->pending_action == "exploit") t->config = event.at("config");
  } else if (type == "end") {
    t->status = status_from(event.value("status", "TERMINATED"));
    t->error = event.value("error", "");
    if (event.value("failure", false)) ++t->failures;
    if (event.value("restart", false)) {
      // Starts over from scratch: the earlier attempt's checkpoints and results no longer
      // count (its lines stay in the trial's result.json).
      t->checkpoints.clear();
      t->has_checkpoint = false;
      t->checkpoint_iteration = 0;
      t->iteration = 0;
      t->time_total_s = 0;
      t->history.clear();
      t->last_result = nullptr;
    }
    t->pending_action.clear();
  }
}

std::vector<const TrialView*> ExperimentState::trials() const {
  std::vector<const TrialView*> out;
  out.reserve(records_.size());
  for (const TrialRecord& t : records_) out.push_back(&t);
  return out;
}

const TrialView* ExperimentState::find(const std::string& trial_id) const {
  auto it = index_.find(trial_id);
  return it == index_.end() ? nullptr : &records_[it->second];
}

TrialRecord* ExperimentState::record(const std::string& trial_id) {
  auto it = index_.find(trial_id);
  return it == index_.end() ? nullptr : &records_[it->second];
}

std::vector<ProgressSnapshot::Trial> progress_rows(const ExperimentState& state) {
  std::vector<ProgressSnapshot::Trial> rows;
  rows.reserve(state.records().size());
  for (const TrialRecord& t : state.records()) {
    ProgressSnapshot::Trial row;
    row.trial_id = t.trial_id;
    row.status = t.status;
    row.config = t.config;
    row.last_result = t.last_result;
    row.node = t.node;
    row.error = t.error;
    rows.push_back(std::move(row));
  }
  return rows;
}

void write_file_atomically(const std::string& file, const std::string& text) {
  // Readers never see half a file: write beside it, then rename over it.
  std::string temporary = file + ".tmp." + std::to_string(::getpid());
  {
    errno = 0;
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw Error("cannot open " + temporary + " (for " + file + "): " + std::strerror(errno));
    out << text;
    out.flush();
    if (!out) {
      int error = errno;
      out.close();
      std::error_code ignored;
      fs::remove(temporary, ignored);
      throw Error("cannot write " + temporary + " (for " + file + "): " + std::strerror(error));
    }
  }
  std::error_code ec;
  fs::rename(temporary, file, ec);
  if (ec) {
    std::string why = ec.message();
    fs::remove(temporary, ec);
    throw Error("cannot rename " + temporary + " to " + file + ": " + why);
  }
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string expand_home(const std::string& path) {
  if (path.empty() || path[0] != '~') return path;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "/tmp") + path.substr(1);
}

}  // namespace gantry::tune::detail
