#include "rank_layout.h"

#include <set>
#include <sstream>

namespace gantry::train::launch {

RankLayout assign_ranks(const std::vector<WorkerPlacement>& workers) {
  RankLayout layout;
  layout.world_size = static_cast<int>(workers.size());
  layout.workers.resize(workers.size());
  std::vector<std::string> node_order;
  std::map<std::string, std::vector<int>> workers_of_node;
  for (size_t i = 0; i < workers.size(); ++i) {
    auto [it, fresh] = workers_of_node.try_emplace(workers[i].node_id);
    if (fresh) node_order.push_back(workers[i].node_id);
    it->second.push_back(static_cast<int>(i));
  }
  layout.num_nodes = static_cast<int>(node_order.size());
  int rank = 0;
  for (size_t n = 0; n < node_order.size(); ++n) {
    const std::vector<int>& local = workers_of_node[node_order[n]];
    // The node's devices in local-rank order, each once.
    std::string devices;
    std::set<std::string> seen;
    for (int w : local) {
      std::stringstream ids(workers[static_cast<size_t>(w)].cuda_visible_devices);
      std::string id;
      while (std::getline(ids, id, ','))
        if (!id.empty() && seen.insert(id).second) devices += (devices.empty() ? "" : ",") + id;
    }
    for (size_t l = 0; l < local.size(); ++l) {
      RankAssignment& a = layout.workers[static_cast<size_t>(local[l])];
      a.rank = rank++;
      a.local_rank = static_cast<int>(l);
      a.local_world_size = static_cast<int>(local.size());
      a.node_rank = static_cast<int>(n);
      a.cuda_visible_devices = devices;
      layout.worker_of_rank.push_back(local[l]);
    }
  }
  return layout;
}

std::map<std::string, std::string> launcher_environment(
    const RankAssignment& a, const RankLayout& layout, const Rendezvous& r,
    const std::vector<std::pair<std::string, std::string>>& user_env) {
  std::map<std::string, std::string> env;
  env["OMP_NUM_THREADS"] = std::to_string(r.threads_per_worker);
  env["OPENBLAS_NUM_THREADS"] = std::to_string(r.threads_per_worker);
  for (const auto& [name, value] : user_env) env[name] = value;
  env["RANK"] = std::to_string(a.rank);
  env["LOCAL_RANK"] = std::to_string(a.local_rank);
  env["WORLD_SIZE"] = std::to_string(layout.world_size);
  env["LOCAL_WORLD_SIZE"] = std::to_string(a.local_world_size);
  env["NODE_RANK"] = std::to_string(a.node_rank);
  env["GROUP_RANK"] = std::to_string(a.node_rank);
  env["GROUP_WORLD_SIZE"] = std::to_string(layout.num_nodes);
  env["ROLE_RANK"] = std::to_string(a.rank);
  env["ROLE_WORLD_SIZE"] = std::to_string(layout.world_size);
  env["ROLE_NAME"] = "default";
  env["MASTER_ADDR"] = r.master_addr;
  env["MASTER_PORT"] = std::to_string(r.master_port);
  env["TORCHELASTIC_RESTART_COUNT"] = std::to_string(r.restart_count);
  env["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(r.max_restarts);
  env["TORCHELASTIC_RUN_ID"] = r.run_id;
  if (r.uses_gpus) env["CUDA_VISIBLE_DEVICES"] = a.cuda_visible_devices;
  return env;
}

std::vector<std::string> program_environment(const std::map<std::string, std::string>& node_env,
                                             const std::map<std::string, std::string>& overrides) {
  std::map<std::string, std::string> merged;
  for (const auto& [name, value] : node_env)
    if (name.rfind("GANTRY_", 0) != 0) merged[name] = value;
  for (const auto& [name, value] : overrides) merged[name] = value;
  std::vector<std::string> out;
  out.reserve(merged.size());
  for (const auto& [name, value] : merged) out.push_back(name + "=" + value);
  return out;
}

}  // namespace gantry::train::launch
