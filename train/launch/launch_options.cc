#include "launch_options.h"

#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>

namespace gantry::train::launch {
namespace {

const std::map<std::string, PlacementStrategy>& placements() {
  static const std::map<std::string, PlacementStrategy> kByName = {
      {"pack", PlacementStrategy::kPack},
      {"spread", PlacementStrategy::kSpread},
      {"strict-pack", PlacementStrategy::kStrictPack},
      {"strict-spread", PlacementStrategy::kStrictSpread},
  };
  return kByName;
}

ParsedCommandLine usage_error(const std::string& message) {
  return {std::nullopt, kExitUsage, "gantry train launch: " + message + "\nRun with --help for more information.\n"};
}

bool is_executable_file(const std::filesystem::path& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

}  // namespace

std::string placement_name(PlacementStrategy strategy) {
  for (const auto& [name, value] : placements())
    if (value == strategy) return name;
  return "pack";
}

ParsedCommandLine parse_command_line(const std::vector<std::string>& args) {
  CLI::App app{"gantry-train (gantry train): run training programs on a gantry cluster", "gantry-train"};
  app.require_subcommand(1);
  LaunchOptions o;
  int min_workers = -1;  // not given
  std::string placement = "pack";
  std::vector<std::string> env;
  auto* launch =
      app.add_subcommand("launch",
                         "run a program written for torchrun on the cluster: one process per worker, with torchrun's "
                         "environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), its output prefixed by rank, the group "
                         "restarted when a rank fails");
  launch->add_option("--workers", o.workers, "workers (ranks) to start")->required();
  launch->add_option("--min-workers", min_workers,
                     "elastic: start with as many workers as fit, but at least this many (default: --workers)");
  launch
      ->add_option("--cpus-per-worker", o.cpus_per_worker,
                   "CPUs each worker reserves; also its OMP_NUM_THREADS and OPENBLAS_NUM_THREADS")
      ->capture_default_str();
  launch->add_option("--gpus-per-worker", o.gpus_per_worker, "GPUs each worker reserves")->capture_default_str();
  launch->add_option("--max-restarts", o.max_restarts, "times the whole group is restarted after a rank fails")
      ->capture_default_str();
  launch
      ->add_option("--placement", placement, "how workers spread over nodes: pack, spread, strict-pack, strict-spread")
      ->capture_default_str();
  launch->add_option("--address", o.address,
                     "the head's HOST:PORT (default: GANTRY_ADDRESS, else the head started on this machine, else "
                     "an embedded cluster on this machine)");
  launch->add_option("--temp-dir", o.temp_dir, "where this machine's sessions are (to find the head and its token)");
  launch->add_option("--name", o.name, "the run's name: TORCHELASTIC_RUN_ID (default: generated)");
  launch->add_option("--env", env, "NAME=VALUE added to the program's environment (repeatable)")
      ->allow_extra_args(false);  // one NAME=VALUE per --env: what follows is the program
  launch->add_option("command", o.command, "the program and its arguments, after --");

  // What follows the first `--` is the program's, word for word: CLI11 would still take
  // an option there that the launcher also has (the program's own --workers, say).
  auto separator = std::find(args.begin(), args.end(), "--");
  std::vector<std::string> reversed(std::make_reverse_iterator(separator), args.rend());
  if (!reversed.empty()) reversed.pop_back();  // the executable's name
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    int rc = app.exit(e, out, err);
    if (rc == 0) return {std::nullopt, 0, out.str()};
    std::string text = err.str();
    if (text.find("subcommand is required") != std::string::npos)
      text += "Usage: gantry train launch --workers N [flags] -- ./program args\n";
    if (text.find("not expected") != std::string::npos)
      text += "Put the program and its arguments after --: gantry train launch --workers 2 -- ./train --lr 0.1\n";
    return {std::nullopt, kExitUsage, text};
  }

  if (o.workers < 1) return usage_error("--workers must be 1 or more, not " + std::to_string(o.workers));
  o.min_workers = min_workers < 0 ? o.workers : min_workers;
  if (o.min_workers < 1) return usage_error("--min-workers must be 1 or more, not " + std::to_string(o.min_workers));
  if (o.min_workers > o.workers)
    return usage_error("--min-workers (" + std::to_string(o.min_workers) + ") must not exceed --workers (" +
                       std::to_string(o.workers) + ")");
  if (o.cpus_per_worker < 1)
    return usage_error("--cpus-per-worker must be 1 or more, not " + std::to_string(o.cpus_per_worker));
  if (o.gpus_per_worker < 0)
    return usage_error("--gpus-per-worker must be 0 or more, not " + std::to_string(o.gpus_per_worker));
  if (o.max_restarts < 0) return usage_error("--max-restarts must be 0 or more, not " + std::to_string(o.max_restarts));
  auto found = placements().find(placement);
  if (found == placements().end())
    return usage_error("--placement must be pack, spread, strict-pack or strict-spread, not '" + placement + "'");
  o.placement = found->second;
  for (const std::string& pair : env) {
    size_t eq = pair.find('=');
    if (eq == std::string::npos || eq == 0) return usage_error("--env takes NAME=VALUE, not '" + pair + "'");
    o.env.emplace_back(pair.substr(0, eq), pair.substr(eq + 1));
  }
  if (separator != args.end()) o.command.insert(o.command.end(), separator + 1, args.end());
  if (o.command.empty() || o.command[0].empty())
    return usage_error("no program given: gantry train launch --workers N [flags] -- ./program args");
  return {std::move(o), 0, {}};
}

std::string resolve_program(const std::string& program, const std::string& working_dir,
                            const std::string& search_path) {
  namespace fs = std::filesystem;
  if (program.find('/') != std::string::npos) {
    fs::path path = fs::path(program).is_absolute() ? fs::path(program) : fs::path(working_dir) / program;
    path = path.lexically_normal();
    if (!fs::exists(path)) throw std::invalid_argument("program " + program + " not found (" + path.string() + ")");
    if (!is_executable_file(path))
      throw std::invalid_argument("program " + program + " (" + path.string() + ") is not an executable file");
    return path.string();
  }
  std::stringstream dirs(search_path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    fs::path candidate = fs::path(dir.empty() ? "." : dir) / program;
    if (candidate.is_relative()) candidate = fs::path(working_dir) / candidate;
    if (is_executable_file(candidate)) return candidate.lexically_normal().string();
  }
  throw std::invalid_argument("program " + program + " not found in PATH; give its path (./" + program + ")");
}

}  // namespace gantry::train::launch
