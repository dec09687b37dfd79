#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gantry/ids.h"
#include "gantry/options.h"

namespace gantry::internal {

class HeadService;
class NodeAgent;

/// The embedded cluster a driver starts by default: a head and one node agent in the
/// driver's process, talking gRPC over Unix sockets in a fresh session directory.
class LocalCluster {
 public:
  /// Creates the session directory and starts head and agent. `argv` is how workers are
  /// started (the driver's own executable and arguments).
  static std::unique_ptr<LocalCluster> start(const InitOptions& options, const std::vector<std::string>& argv);
  ~LocalCluster();
  /// Stops workers, agent and head. Idempotent.
  void stop();

  const std::string& session_dir() const { return session_dir_; }
  std::string head_address() const;
  std::string agent_address() const;
  const UniqueId& node_id() const { return node_id_; }
  const UniqueId& job_id() const { return job_id_; }
  int num_cpus() const { return num_cpus_; }

 private:
  LocalCluster() = default;

  std::string session_dir_;
  UniqueId node_id_;
  UniqueId job_id_;
  int num_cpus_ = 0;
  std::unique_ptr<HeadService> head_;
  std::unique_ptr<NodeAgent> agent_;
};

/// Creates `<root>/session_<time>_<pid>` with logs/ and sockets/, and points
/// `<root>/session_latest` at it. `root` empty uses $TMPDIR/gantry or /tmp/gantry.
std::string create_session_dir(const std::string& root);

/// Writes the cluster token to `path`, readable by this user only (mode 0600).
void write_token_file(const std::string& path, const std::string& token);

}  // namespace gantry::internal
