#pragma once

#include <stdexcept>
#include <string>

namespace gantry {

/// Base of every exception gantry throws. `what()` is a complete, human-readable message.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/// Where a remote failure happened: the function or actor method, the node and the process.
struct RemoteSite {
  std::string function;
  std::string node;
  int pid = 0;
};

/// User code threw inside a task or actor method. Rethrown at `get()`.
class TaskError : public Error {
 public:
  TaskError(std::string remote_type, std::string remote_message, RemoteSite site);
  /// The demangled type of the remote exception, e.g. `std::invalid_argument`.
  const std::string& remote_type() const { return remote_type_; }
  /// The remote exception's `what()`.
  const std::string& remote_message() const { return remote_message_; }
  const std::string& function() const { return site_.function; }
  const std::string& node() const { return site_.node; }
  int pid() const { return site_.pid; }

 private:
  std::string remote_type_;
  std::string remote_message_;
  RemoteSite site_;
};

/// The worker process running a task died (crash, SIGKILL, OOM) and retries ran out.
class WorkerCrashedError : public Error {
 public:
  using Error::Error;
};

/// The task or actor call was cancelled with `gantry::cancel` before it finished (dropped
/// before it ran, stopped cooperatively, or its worker killed with `force`). Rethrown at
/// `get()`; the message names the function.
class TaskCancelledError : public Error {
 public:
  using Error::Error;
};

/// The actor is dead: killed, its process died with no restarts left, or its factory threw.
class ActorDiedError : public Error {
 public:
  using Error::Error;
};

/// `get()` with a timeout found the object not ready in time. (`wait()` does not throw
/// it: it returns what is ready when the timeout passes.)
class GetTimeoutError : public Error {
 public:
  using Error::Error;
};

/// A resource request that no node of the cluster can ever satisfy.
class InfeasibleError : public Error {
 public:
  using Error::Error;
};

/// The object's value is gone: its owner or the only node holding it died.
class ObjectLostError : public Error {
 public:
  using Error::Error;
};

/// The shared-memory object store has no room for an object.
class ObjectStoreFullError : public Error {
 public:
  using Error::Error;
};

/// A value could not be decoded: malformed bytes or a type that does not match.
class DecodeError : public Error {
 public:
  using Error::Error;
};

}  // namespace gantry
