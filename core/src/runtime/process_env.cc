#include "runtime/process_env.h"

#include <cstdlib>
#include <stdexcept>

namespace gantry::internal {
namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The whole of `text` as a number >= 0, or -1.
int parse_whole_number(const std::string& text) {
  size_t used = 0;
  int v = -1;
  try {
    v = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  return used == text.size() && !text.empty() && v >= 0 ? v : -1;
}

}  // namespace

std::vector<int> parse_id_list(const std::string& text) {
  std::vector<int> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string part = text.substr(start, end - start);
    int v = parse_whole_number(part);
    if (v < 0)
      throw std::invalid_argument("bad id '" + part + "' in list '" + text + "'");
    out.push_back(v);
    start = end + 1;
  }
  return out;
}

std::string join_ids(const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  return out;
}

ProcessEnv ProcessEnv::read() {
  ProcessEnv e;
  e.worker_mode = env_or_empty("GANTRY_WORKER") == "1";
  e.agent_address = env_or_empty("GANTRY_AGENT_ADDRESS");
  e.head_address = env_or_empty("GANTRY_HEAD_ADDRESS");
  e.session_dir = env_or_empty("GANTRY_SESSION_DIR");
  e.worker_id = env_or_empty("GANTRY_WORKER_ID");
  e.node_id = env_or_empty("GANTRY_NODE_ID");
  e.job_id = env_or_empty("GANTRY_JOB_ID");
  e.gpu_ids = parse_id_list(env_or_empty("GANTRY_GPU_IDS"));
  e.log_level = env_or_empty("GANTRY_LOG_LEVEL");
  e.log_to_driver = env_or_empty("GANTRY_LOG_TO_DRIVER") != "0";
  e.address = env_or_empty("GANTRY_ADDRESS");
  e.temp_dir = env_or_empty("GANTRY_TEMP_DIR");
  e.token = env_or_empty("GANTRY_TOKEN");
  e.output_to = env_or_empty("GANTRY_OUTPUT_TO");
  e.node_ip = env_or_empty("GANTRY_NODE_IP");
  e.force_grpc_streams = env_or_empty("GANTRY_TASK_TRANSPORT") == "grpc";
  if (std::string spin = env_or_empty("GANTRY_GET_SPIN_US"); !spin.empty()) {
    int v = parse_whole_number(spin);
    if (v < 0 || v > 10000)
      throw std::invalid_argument("GANTRY_GET_SPIN_US='" + spin + "' is not a whole number of microseconds from 0 to 10000");
    e.get_spin_us = v;
  }
  return e;
}

}  // namespace gantry::internal
