#pragma once

// The commit a benchmark was built from, for the header line of its output.

#include <cstdio>
#include <string>

namespace gantry::bench {

/// The output of a shell command, trailing newlines and spaces cut; empty when it fails.
inline std::string run_command(const std::string& command) {
  std::string out;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof(buf), pipe) != nullptr) out += buf;
    if (::pclose(pipe) != 0) return {};
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

/// The short hash of the source tree's HEAD, "(with local changes)" when it differs from
/// it; "unknown" without git or without GANTRY_SOURCE_DIR.
inline std::string source_commit() {
#ifdef GANTRY_SOURCE_DIR
  std::string git = "git -C '" + std::string(GANTRY_SOURCE_DIR) + "' ";
  std::string commit = run_command(git + "rev-parse --short HEAD 2>/dev/null");
  if (commit.empty()) return "unknown";
  if (run_command(git + "diff --quiet HEAD 2>/dev/null || echo dirty") == "dirty") commit += " (with local changes)";
  return commit;
#else
  return "unknown";
#endif
}

}  // namespace gantry::bench
