// gantry-tune: `gantry tune status PATH` prints a sweep's table from its files, whether
// its driver still runs, finished or was killed. It reads; it never writes.

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>

#include "experiment_log.h"
#include "progress_reporter.h"

namespace fs = std::filesystem;
using gantry::Json;
using namespace gantry::tune;
using namespace gantry::tune::detail;

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

size_t terminal_width() {
  winsize w{};
  if (::isatty(1) && ::ioctl(1, TIOCGWINSZ, &w) == 0 && w.ws_col > 20) return w.ws_col;
  return 160;
}

std::string age(double seconds) {
  char buf[64];
  if (seconds < 120) {
    std::snprintf(buf, sizeof(buf), "%.0f s", seconds);
  } else if (seconds < 7200) {
    std::snprintf(buf, sizeof(buf), "%.0f min", seconds / 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f h", seconds / 3600);
  }
  return buf;
}

int print_status(const fs::path& dir, size_t rows, size_t width) {
  Json tuner;
  {
    std::ifstream in(dir / "tuner.json");
    try {
      tuner = Json::parse(in);
    } catch (const Json::exception& e) {
      std::cerr << "gantry tune status: " << (dir / "tuner.json").string() << " is not valid JSON: " << e.what() << "\n";
      return kExitFailure;
    }
  }
  ExperimentState state;
  for (const Json& event : ExperimentLog::read((dir / "experiment_state.jsonl").string())) state.apply(event);
  const Json& t = tuner.value("tune", Json::object());
  ProgressSnapshot s;
  s.experiment = tuner.value("name", dir.filename().string());
  s.path = dir.string();
  s.metric = t.value("metric", "");
  s.mode = t.value("mode", "min") == "max" ? kMax : kMin;
  double created = tuner.value("created", 0.0);
  s.elapsed_s = std::max(0.0, state.last_event_time - created);
  s.resources = "searcher " + t.value("searcher_name", std::string("?")) + ", scheduler " +
                t.value("scheduler_name", std::string("?"));
  s.trials = progress_rows(state);
  if (state.finished) {
    std::cout << "Finished (" << state.sessions << " session(s)).\n";
  } else {
    std::cout << "Not finished: last change " << age(unix_now() - state.last_event_time)
              << " ago. If its driver is gone, continue it with tune::Tuner::restore(\"" << dir.string()
              << "\", ...).\n";
  }
  std::cout << ProgressReporter::render(s, rows, width);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gantry tune: look at hyperparameter sweeps"};
  app.name("gantry tune");
  app.require_subcommand(1);
  std::string path;
  bool all = false;
  size_t width = 0;
  auto* status = app.add_subcommand("status", "print a sweep's trial table from its directory (running or finished)");
  status->add_option("path", path, "the experiment's directory (storage_path/name), or a storage path to list")
      ->required();
  status->add_flag("--all", all, "list every trial (default: the first 30 rows)");
  status->add_option("--width", width, "columns to fit the table in (default: the terminal's, else 160)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  fs::path dir = fs::absolute(expand_home(path));
  if (!fs::is_directory(dir)) {
    std::cerr << "gantry tune status: " << dir.string() << " is not a directory\n";
    return kExitFailure;
  }
  size_t cols = width > 0 ? width : terminal_width();
  size_t rows = all ? std::numeric_limits<size_t>::max() : 30;
  try {
    if (fs::exists(dir / "tuner.json")) return print_status(dir, rows, cols);
    // A storage path: list the sweeps in it.
    std::vector<fs::path> sweeps;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_directory() && fs::exists(entry.path() / "tuner.json")) sweeps.push_back(entry.path());
    }
    if (sweeps.empty()) {
      std::cerr << "gantry tune status: " << dir.string()
                << " holds no sweep (no tuner.json in it or in its subdirectories)\n";
      return kExitFailure;
    }
    std::sort(sweeps.begin(), sweeps.end());
    std::cout << sweeps.size() << " sweep(s) in " << dir.string() << ":\n";
    for (const fs::path& p : sweeps) {
      ExperimentState state;
      for (const Json& event : ExperimentLog::read((p / "experiment_state.jsonl").string())) state.apply(event);
      size_t done = 0;
      for (const TrialRecord& r : state.records())
        if (r.status == TrialStatus::kTerminated || r.status == TrialStatus::kError) ++done;
      std::cout << "  " << p.filename().string() << ": " << state.records().size() << " trial(s), " << done
                << " ended, " << (state.finished ? "finished" : "not finished") << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "gantry tune status: " << e.what() << "\n";
    return kExitFailure;
  }
}
