#pragma once

// Rank assignment and torchrun's environment contract for a group of workers that have
// been placed on nodes. Pure: tested with hand-made placements, no cluster.

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace gantry::train::launch {

/// Where one worker of the group (one actor, in its bundle) landed, as it reports it.
struct WorkerPlacement {
  std::string node_id;
  /// The worker's own devices as its process sees them, e.g. "2" or "2,3"; empty without
  /// GPUs.
  std::string cuda_visible_devices;
};

/// torchrun's view of one worker.
struct RankAssignment {
  int rank = 0;
  int local_rank = 0;
  int local_world_size = 0;
  /// The node's index (NODE_RANK and GROUP_RANK); rank 0's node is 0.
  int node_rank = 0;
  /// Every device of the group's workers on this node, in local-rank order: device
  /// LOCAL_RANK of the program is then its own (for one GPU per worker), the way
  /// `torch.cuda.set_device(local_rank)` under torchrun expects. Empty without GPUs.
  std::string cuda_visible_devices;
};

/// Ranks for a whole group.
struct RankLayout {
  int world_size = 0;
  int num_nodes = 0;
  /// Indexed like the placements given to assign_ranks (worker, that is bundle, order).
  std::vector<RankAssignment> workers;
  /// The worker index of each rank.
  std::vector<int> worker_of_rank;
};

/// Assigns ranks once the workers have started: workers are grouped by node, nodes are
/// taken in the order their first worker appears (so worker 0's node is node 0 and holds
/// rank 0), and ranks run contiguously through each node's workers in worker order.
///
///     // workers on nodes A, B, A: ranks 0 (A), 2 (B), 1 (A); local ranks 0, 0, 1
///     RankLayout layout = assign_ranks({{"A", ""}, {"B", ""}, {"A", ""}});
RankLayout assign_ranks(const std::vector<WorkerPlacement>& workers);

/// What every process of one attempt shares.
struct Rendezvous {
  std::string master_addr;
  int master_port = 0;
  int restart_count = 0;
  int max_restarts = 0;
  std::string run_id;
  /// OMP_NUM_THREADS and OPENBLAS_NUM_THREADS unless the user's variables set them.
  int threads_per_worker = 1;
  /// Whether the workers hold GPUs: CUDA_VISIBLE_DEVICES is then the node's set.
  bool uses_gpus = false;
};

/// The variables the launcher sets for one worker's program, in increasing precedence:
/// OMP_NUM_THREADS and OPENBLAS_NUM_THREADS, then `user_env` (--env), then torchrun's
/// contract: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK, GROUP_RANK,
/// GROUP_WORLD_SIZE, ROLE_RANK, ROLE_WORLD_SIZE, ROLE_NAME, MASTER_ADDR, MASTER_PORT,
/// TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_MAX_RESTARTS, TORCHELASTIC_RUN_ID, and
/// CUDA_VISIBLE_DEVICES when the workers hold GPUs.
std::map<std::string, std::string> launcher_environment(
    const RankAssignment& assignment, const RankLayout& layout, const Rendezvous& rendezvous,
    const std::vector<std::pair<std::string, std::string>>& user_env);

/// The program's whole environment as NAME=VALUE strings: the worker process's own
/// environment (`node_env`, the node's) without gantry's GANTRY_* variables, overridden by
/// `overrides` (what launcher_environment gave).
std::vector<std::string> program_environment(const std::map<std::string, std::string>& node_env,
                                             const std::map<std::string, std::string>& overrides);

}  // namespace gantry::train::launch
