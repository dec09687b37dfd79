#pragma once

#include <string>
#include <vector>

namespace gantry::internal {

/// Every GANTRY_* environment variable this process reads, read once at start-up.
/// The node agent sets them when it starts a worker; a user may set GANTRY_ADDRESS,
/// GANTRY_LOG_LEVEL, GANTRY_TEMP_DIR and GANTRY_TOKEN for a driver.
struct ProcessEnv {
  bool worker_mode = false;      // GANTRY_WORKER=1
  std::string agent_address;     // GANTRY_AGENT_ADDRESS
  std::string head_address;      // GANTRY_HEAD_ADDRESS
  std::string session_dir;       // GANTRY_SESSION_DIR
  std::string worker_id;         // GANTRY_WORKER_ID (hex)
  std::string node_id;           // GANTRY_NODE_ID (hex)
  std::string job_id;            // GANTRY_JOB_ID (hex)
  std::vector<int> gpu_ids;      // GANTRY_GPU_IDS, comma-separated
  std::string log_level;         // GANTRY_LOG_LEVEL
  bool log_to_driver = true;     // GANTRY_LOG_TO_DRIVER
  std::string address;           // GANTRY_ADDRESS (cluster to join)
  std::string temp_dir;          // GANTRY_TEMP_DIR
  bool force_grpc_streams = false;  // GANTRY_TASK_TRANSPORT=grpc: task streams over gRPC even on one node
  int get_spin_us = 50;            // GANTRY_GET_SPIN_US: how long a lone get spins before sleeping; 0 never
  std::string token;             // GANTRY_TOKEN (the cluster token)
  std::string output_to;         // GANTRY_OUTPUT_TO: the joined driver that prints our output
  std::string node_ip;           // GANTRY_NODE_IP: serve on TCP at this address (a multi-node cluster)

  static ProcessEnv read();
};

/// Parses "0,1,3" into ids; throws std::invalid_argument naming the bad part.
std::vector<int> parse_id_list(const std::string& text);
std::string join_ids(const std::vector<int>& ids);

}  // namespace gantry::internal
