#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/node_agent.h"
#include "gantry/ids.h"
#include "gantry/options.h"
#include "scheduler/resource_set.h"

namespace gantry::internal {

class DashboardServer;

class HeadService;

/// What a node offers: CPUs, GPUs, memory and custom resources.
struct NodeShape {
  ResourceSet total;
  int num_cpus = 0;
  int num_gpus = 0;
  bool gpus_detected = false;  // found through the driver, not declared (logical)
};

/// A node's shape from settings: `num_cpus` -1 takes the machine's cores, `num_gpus` -1
/// detects devices (zero without a driver), `custom` adds named resources (not CPU, GPU or
/// memory). Throws gantry::Error naming a bad setting.
NodeShape make_node_shape(int num_cpus, int num_gpus, const std::map<std::string, double>& custom);

/// Agent settings for a node of `shape` whose session directory is `session_dir`: its
/// store in /dev/shm (`object_store_memory` bytes, -1 for 30% of memory) and the settings
/// every worker gets. Listen and head addresses are the caller's to fill in.
NodeAgentConfig make_agent_config(const std::string& session_dir, const NodeShape& shape,
                                  int64_t object_store_memory, const std::string& listen_address,
                                  const std::string& head_address);

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
  /// The dashboard's URL, or "" when it serves none.
  std::string dashboard_url() const;

 private:
  LocalCluster() = default;

  std::string session_dir_;
  UniqueId node_id_;
  UniqueId job_id_;
  int num_cpus_ = 0;
  std::unique_ptr<HeadService> head_;
  std::unique_ptr<NodeAgent> agent_;
  std::unique_ptr<DashboardServer> dashboard_;  // stopped before head and agent
};

/// Creates `<root>/<prefix>_<time>_<pid>` with logs/ and sockets/; for the "session"
/// prefix also points `<root>/session_latest` at it. `root` empty uses $TMPDIR/gantry or
/// /tmp/gantry.
std::string create_session_dir(const std::string& root, const std::string& prefix = "session");

/// Writes the cluster token to `path`, readable by this user only (mode 0600).
void write_token_file(const std::string& path, const std::string& token);

}  // namespace gantry::internal
