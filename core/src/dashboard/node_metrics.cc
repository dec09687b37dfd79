#include "dashboard/node_metrics.h"

#include <map>

#include "gantry/ids.h"
#include "scheduler/resource_set.h"

namespace gantry::internal {

void add_node_metrics(PrometheusText& out, const proto::NodeStats& s) {
  const std::string node = s.node_id().size() == 16 ? UniqueId::from_binary(s.node_id()).hex() : std::string();
  using L = PrometheusText::Labels;
  out.gauge("gantry_node_info", "A live node of the cluster (value 1), with its host name.",
            {{"node", node}, {"hostname", s.hostname()}}, 1);
  std::map<std::string, int64_t> total(s.total().quantities().begin(), s.total().quantities().end());
  std::map<std::string, int64_t> available(s.available().quantities().begin(), s.available().quantities().end());
  for (const auto& [name, amount] : total) {
    double t = static_cast<double>(amount) / kResourceUnit;
    double free = available.count(name) ? static_cast<double>(available[name]) / kResourceUnit : 0;
    out.gauge("gantry_resource_capacity", "Resources a node offers, by kind (memory in bytes).",
              L{{"node", node}, {"resource", name}}, t);
    out.gauge("gantry_resource_used", "Resources of a node held by tasks, actors and placement group bundles.",
              L{{"node", node}, {"resource", name}}, t - free);
  }
  out.gauge("gantry_object_store_used_bytes", "Bytes of a node's shared-memory object store in use.", {{"node", node}},
            static_cast<double>(s.store_used()));
  out.gauge("gantry_object_store_capacity_bytes", "Capacity of a node's shared-memory object store.",
            {{"node", node}}, static_cast<double>(s.store_capacity()));
  out.gauge("gantry_object_store_objects", "Objects in a node's shared-memory store.", {{"node", node}},
            static_cast<double>(s.store_objects()));
  out.counter("gantry_object_store_evicted_total",
              "Copies of other nodes' objects a node's store dropped to make room.", {{"node", node}},
              static_cast<double>(s.store_evicted()));
  if (s.cpu_utilization() >= 0)
    out.gauge("gantry_node_cpu_utilization_ratio", "Busy share of the node machine's CPUs (0 to 1).",
              {{"node", node}}, s.cpu_utilization());
  if (s.cpu_cores() > 0)
    out.gauge("gantry_node_cpu_cores", "CPU cores of the node machine.", {{"node", node}}, s.cpu_cores());
  if (s.memory_total() > 0) {
    out.gauge("gantry_node_memory_used_bytes", "Memory in use on the node machine (total less available).",
              {{"node", node}}, static_cast<double>(s.memory_used()));
    out.gauge("gantry_node_memory_total_bytes", "Memory of the node machine.", {{"node", node}},
              static_cast<double>(s.memory_total()));
  }
  out.gauge("gantry_node_workers", "Worker processes of a node: idle ones, and busy ones (leased or hosting an actor).",
            L{{"node", node}, {"state", "idle"}}, s.num_idle_workers());
  out.gauge("gantry_node_workers", "", L{{"node", node}, {"state", "busy"}}, s.num_workers() - s.num_idle_workers());
  for (const auto& g : s.gpus()) {
    std::string gpu = std::to_string(g.index());
    out.gauge("gantry_gpu_info", "A GPU a node offers (value 1): its name, and whether it is logical (declared, no device).",
              L{{"node", node}, {"gpu", gpu}, {"name", g.name()}, {"logical", g.logical() ? "true" : "false"}}, 1);
    out.gauge("gantry_gpu_in_use", "Whether a GPU is given to a task or actor now (1) or free (0).",
              L{{"node", node}, {"gpu", gpu}}, g.in_use() ? 1 : 0);
    if (g.utilization() >= 0)
      out.gauge("gantry_gpu_utilization_ratio", "Share of the last sample period a GPU's kernels ran (NVML), 0 to 1.",
                L{{"node", node}, {"gpu", gpu}}, g.utilization());
    if (g.memory_total() > 0) {
      out.gauge("gantry_gpu_memory_used_bytes", "GPU memory in use (NVML).", L{{"node", node}, {"gpu", gpu}},
                static_cast<double>(g.memory_used()));
      out.gauge("gantry_gpu_memory_total_bytes", "GPU memory (NVML).", L{{"node", node}, {"gpu", gpu}},
                static_cast<double>(g.memory_total()));
    }
  }
}

}  // namespace gantry::internal
