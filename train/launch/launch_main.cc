// gantry-train: runs training programs written for torchrun on a gantry cluster, with no
// change to them. `gantry train ...` runs this program (it sits next to `gantry`).
//
//     gantry-train launch --workers 8 --gpus-per-worker 1 [--min-workers 4] [--max-restarts 3] -- ./train args
//
// It is a gantry driver: the node agents start it again as the workers that host the
// ranks' actors. Exit codes: 0 every rank exited 0; 1 a rank failed with no restarts
// left, or the cluster cannot hold or be reached; 2 a bad command line; 128 + signal when
// stopped by SIGINT or SIGTERM.

#include <signal.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "gantry/gantry.h"
#include "launch_options.h"
#include "launcher.h"
#include "runtime/cluster_client.h"

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

// The first SIGINT or SIGTERM asks for a clean stop (every rank ended); a second one, while
// that is under way, ends the launcher at once.
void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
  g_stop_signal = sig;
}

const char* env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

int run(int argc, char** argv) {
  namespace launch = gantry::train::launch;
  launch::ParsedCommandLine parsed = launch::parse_command_line(std::vector<std::string>(argv, argv + argc));
  if (!parsed.options) {
    (parsed.exit_code == 0 ? std::cout : std::cerr) << parsed.message << std::flush;
    return parsed.exit_code;
  }
  launch::LaunchOptions options = std::move(*parsed.options);
  std::string working_dir = std::filesystem::current_path().string();
  std::string program;
  try {
    program = launch::resolve_program(options.command[0], working_dir, env_or_empty("PATH"));
  } catch (const std::invalid_argument& e) {
    std::cerr << "gantry train launch: " << e.what() << "\n";
    return launch::kExitUsage;
  }

  // The cluster, as the other `gantry` commands find it: --address, else GANTRY_ADDRESS
  // (gantry::init reads it), else the head started on this machine, else none: the
  // launcher then runs an embedded cluster of its own.
  std::string address = options.address;
  std::string temp_dir = options.temp_dir.empty() ? env_or_empty("GANTRY_TEMP_DIR") : options.temp_dir;
  if (address.empty() && *env_or_empty("GANTRY_ADDRESS") == '\0')
    address = gantry::internal::latest_head_address(gantry::internal::session_root(temp_dir));
  try {
    gantry::init(argc, argv, {.temp_dir = temp_dir, .address = address});
  } catch (const gantry::Error& e) {
    std::cerr << "gantry train launch: " << e.what() << "\n";
    return 1;
  }
  struct sigaction stop {};
  stop.sa_handler = on_stop_signal;
  ::sigaction(SIGINT, &stop, nullptr);
  ::sigaction(SIGTERM, &stop, nullptr);

  int rc = 1;
  try {
    launch::Launcher launcher(std::move(options), program, working_dir, [] { return static_cast<int>(g_stop_signal); });
    rc = launcher.run();
  } catch (const std::exception& e) {
    std::cerr << "gantry train launch: " << e.what() << "\n";
  }
  gantry::shutdown();
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  // A worker (this program started again by a node agent, with GANTRY_WORKER=1; see
  // docs/guide.md) hosts a rank's actor inside gantry::init, which never returns. It must
  // get there before the launcher's checks: the program need not exist where it runs.
  if (*env_or_empty("GANTRY_WORKER") != '\0') gantry::init(argc, argv);
  return run(argc, argv);
}
