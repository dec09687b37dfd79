#pragma once

// The command line of `gantry train launch` (the `gantry-train` executable): what to run,
// how many workers, and how to find the cluster. Pure: no cluster, no processes.

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "gantry/options.h"

namespace gantry::train::launch {

/// Exit code of a bad command line, as for every `gantry` subcommand.
constexpr int kExitUsage = 2;

/// What `gantry train launch` was asked to do.
struct LaunchOptions {
  /// Workers (ranks) to start: one actor, one bundle and one program process each.
  int workers = 1;
  /// Elastic lower bound: start with as many workers as fit, but at least this many.
  /// Equal to `workers` when not given (not elastic).
  int min_workers = 1;
  /// CPUs each worker's bundle reserves; also the program's OMP_NUM_THREADS and
  /// OPENBLAS_NUM_THREADS.
  int cpus_per_worker = 1;
  int gpus_per_worker = 0;
  /// Times the whole group is restarted after a rank fails.
  int max_restarts = 0;
  PlacementStrategy placement = PlacementStrategy::kPack;
  /// The cluster to join; empty: GANTRY_ADDRESS, else the head started on this machine,
  /// else an embedded cluster inside the launcher.
  std::string address;
  /// Where this machine's gantry sessions live (to find the head and its token).
  std::string temp_dir;
  /// The run's name: TORCHELASTIC_RUN_ID and the placement group's name. Empty: generated.
  std::string name;
  /// NAME=VALUE pairs added to the program's environment (--env, repeatable).
  std::vector<std::pair<std::string, std::string>> env;
  /// The program as given and its arguments.
  std::vector<std::string> command;
};

/// The outcome of parsing: options to run with, or text to print and an exit code
/// (0 with the help text on stdout; kExitUsage with an error for stderr).
struct ParsedCommandLine {
  std::optional<LaunchOptions> options;
  int exit_code = 0;
  std::string message;
};

/// Parses `args` (args[0] is the executable's name; then `launch`, its flags, `--`, the
/// program and its arguments). Checks everything that can be checked without the file
/// system: numbers in range, --min-workers not above --workers, a program given.
///
///     auto parsed = parse_command_line({"gantry-train", "launch", "--workers", "2", "--", "./prog"});
///     if (!parsed.options) { std::cerr << parsed.message; return parsed.exit_code; }
ParsedCommandLine parse_command_line(const std::vector<std::string>& args);

/// The absolute path of `program`: relative to `working_dir` when it contains a '/',
/// else the first executable file of that name in the ':'-separated `search_path` (as a
/// shell finds commands). Throws std::invalid_argument naming the program when there is no
/// such executable file.
std::string resolve_program(const std::string& program, const std::string& working_dir, const std::string& search_path);

/// The placement strategy's flag spelling: "pack", "spread", "strict-pack", "strict-spread".
std::string placement_name(PlacementStrategy strategy);

}  // namespace gantry::train::launch
