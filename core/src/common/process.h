#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace gantry::internal {

/// This process's environment, name -> value.
std::map<std::string, std::string> current_environment();

struct SpawnOptions {
  bool search_path = false;        // look `program` up in PATH when it has no '/'
  std::string working_dir;         // empty: this process's
  std::string output_file;         // empty: inherit stdout and stderr; else both go there (stdin /dev/null)
  bool new_process_group = false;  // lead a group of its own (signal it and its children as one)
};

/// Starts `program` with `argv` (argv[0] included) and exactly `environment`, with an
/// empty signal mask and default dispositions whatever this thread has blocked. Returns
/// 0 and sets `pid`, or the error number (for strerror).
int spawn_process(const std::string& program, const std::vector<std::string>& argv,
                  const std::map<std::string, std::string>& environment, const SpawnOptions& options, pid_t* pid);

}  // namespace gantry::internal
