#pragma once

// What the driver and the worker actors of a run send each other (gantry values).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "gantry/codec.h"

namespace gantry::train::detail {

/// A checkpoint directory's files, in flight through the object store. Empty: none.
struct CheckpointFiles {
  std::map<std::string, std::vector<uint8_t>> files;  ///< relative path -> contents
  std::string metadata_json;
  bool empty() const { return files.empty() && metadata_json.empty(); }
  GANTRY_FIELDS(files, metadata_json);
};

/// Where a worker actor landed.
struct WorkerInfo {
  std::string node_id;
  std::string node_ip;
  std::vector<int> gpu_ids;
  int pid = 0;
  GANTRY_FIELDS(node_id, node_ip, gpu_ids, pid);
};

/// Everything a worker needs to run the loop.
struct WorkerStart {
  std::string loop_name;
  std::string config_json;
  std::string run_name;
  std::string run_id;  ///< unique per fit(): keys and group names
  std::string storage_path;
  std::string run_path;
  std::string group;   ///< the collective group's name
  int world_rank = 0;
  int local_rank = 0;
  int world_size = 1;
  int local_world_size = 1;
  int node_rank = 0;
  std::string master_addr;
  int master_port = 0;
  int restart_count = 0;
  int max_restarts = 0;
  bool use_gpu = false;
  int cpus = 1;
  int64_t report_timeout_ms = 600000;
  GANTRY_FIELDS(loop_name, config_json, run_name, run_id, storage_path, run_path, group, world_rank, local_rank,
                world_size, local_world_size, node_rank, master_addr, master_port, restart_count, max_restarts,
                use_gpu, cpus, report_timeout_ms);
};

/// One `report` of one rank.
struct ReportRecord {
  int64_t index = 0;
  std::string metrics_json;
  int64_t samples = 0;  ///< samples its loaders read since its previous report
  bool all_ranks = false;
  CheckpointFiles checkpoint;
  GANTRY_FIELDS(index, metrics_json, samples, all_ranks, checkpoint);
};

/// What `poll` hands the driver: the reports since the last poll, and whether the loop
/// has returned (then `run`'s result says how).
struct PollResult {
  std::vector<ReportRecord> reports;
  bool finished = false;
  GANTRY_FIELDS(reports, finished);
};

}  // namespace gantry::train::detail
