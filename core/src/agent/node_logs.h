#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "gantry/agent.pb.h"

namespace gantry::internal {

/// The log files of a node's session (`logs/` of its session directory), for the
/// dashboard. Only plain files directly inside `dir` are served: a name with a '/' or
/// one that is not listed is refused. Stateless; thread-safe.
class NodeLogs {
 public:
  explicit NodeLogs(std::string dir) : dir_(std::move(dir)) {}

  /// The files, largest kinds first: worker output, worker logs, then the daemons'.
  proto::ListLogsReply list() const;
  /// Reads part of file `req.name()`: from `req.offset()`, or its last `tail_lines` lines
  /// when offset is -1. Returns false with `error` for a bad request.
  bool read(const proto::ReadLogRequest& req, proto::ReadLogReply* reply, std::string* error) const;

 private:
  std::string dir_;
};

/// A process's thread stacks, from `eu-stack -p PID` (elfutils), else gdb in batch mode.
/// Throws gantry::Error naming what to install when neither can be run, or why it failed.
/// Gives up after `timeout`.
proto::StacksReply thread_stacks(pid_t pid, std::chrono::seconds timeout = std::chrono::seconds(20));

}  // namespace gantry::internal
