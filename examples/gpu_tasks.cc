// GPU scheduling with *logical* GPUs, so it runs on any machine: tasks and actors ask for
// whole or fractional GPUs, and each reports its node, the device ids it was given and the
// CUDA_VISIBLE_DEVICES its worker process sees. A task asking for no GPU sees none, a
// request as large as the largest node runs there, and a request no node can ever meet
// fails with gantry::InfeasibleError. Run alone, it starts a one-node cluster with two
// GPUs; submitted to a cluster, it checks against the GPUs gantry::nodes() reports.
//
//     gpu_tasks
//     gantry job submit -- gpu_tasks

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "gantry/gantry.h"

/// What a task or actor learns about its GPUs from inside its worker process.
struct GpuView {
  std::string node_id;                              ///< gantry::runtime_context().node_id
  std::vector<int> gpu_ids;                         ///< gantry::get_gpu_ids()
  std::optional<std::string> cuda_visible_devices;  ///< empty optional when the variable is unset
  double assigned_gpus = 0;                         ///< the GPU quantity the scheduler assigned
  int pid = 0;

  GANTRY_FIELDS(node_id, gpu_ids, cuda_visible_devices, assigned_gpus, pid);
};

namespace {

GpuView current_gpu_view() {
  gantry::RuntimeContext context = gantry::runtime_context();
  GpuView view;
  view.node_id = context.node_id;
  view.gpu_ids = gantry::get_gpu_ids();
  // Read here on purpose: the example's point is what the worker's environment says.
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) view.cuda_visible_devices = visible;
  auto gpus = context.assigned_resources.find("GPU");
  view.assigned_gpus = gpus == context.assigned_resources.end() ? 0 : gpus->second;
  view.pid = context.pid;
  return view;
}

}  // namespace

/// A task that reports the GPUs it was given.
GpuView gpu_task() { return current_gpu_view(); }

/// An actor holds its GPUs for its whole life.
class GpuActor {
 public:
  static GpuActor* create() { return new GpuActor; }
  GpuView view() const { return current_gpu_view(); }
};

GANTRY_REMOTE(gpu_task);
GANTRY_REMOTE(GpuActor::create, &GpuActor::view);

namespace {

/// GPUs of a standalone run, which starts its own one-node cluster.
constexpr int kLocalGpus = 2;

/// The live nodes and their GPUs, as gantry::nodes() reports them.
class GpuCapacity {
 public:
  struct Node {
    std::string id;
    int gpus = 0;
  };

  GpuCapacity() {
    for (const gantry::NodeInfo& node : gantry::nodes()) {
      if (!node.alive) continue;
      auto gpus = node.resources.find("GPU");
      int count = gpus == node.resources.end() ? 0 : static_cast<int>(gpus->second);
      nodes_.push_back({node.node_id, count});
    }
  }

  /// GPUs of the node with this id; -1 for a node that is not a live one.
  int gpus_on(const std::string& node_id) const {
    for (const Node& node : nodes_)
      if (node.id == node_id) return node.gpus;
    return -1;
  }
  /// The node's position in gantry::nodes(), for short reports; -1 if unknown.
  int index_of(const std::string& node_id) const {
    for (size_t i = 0; i < nodes_.size(); ++i)
      if (nodes_[i].id == node_id) return static_cast<int>(i);
    return -1;
  }
  int largest_node() const {
    int largest = 0;
    for (const Node& node : nodes_) largest = std::max(largest, node.gpus);
    return largest;
  }
  int total() const {
    int total = 0;
    for (const Node& node : nodes_) total += node.gpus;
    return total;
  }
  /// In gantry::nodes() order.
  const std::vector<Node>& nodes() const { return nodes_; }
  void print() const {
    std::cout << "gpu_tasks: " << nodes_.size() << " live node(s), " << total() << " logical GPUs\n";
    for (size_t i = 0; i < nodes_.size(); ++i)
      std::cout << "  node " << i << "  " << nodes_[i].id << "  " << nodes_[i].gpus << " GPU(s)\n";
  }

 private:
  std::vector<Node> nodes_;
};

std::string join(const std::vector<int>& ids) {
  std::ostringstream out;
  for (size_t i = 0; i < ids.size(); ++i) out << (i == 0 ? "" : ",") << ids[i];
  return out.str();
}

/// Prints one report and checks it against the request: as many devices as asked for
/// (one for a fraction), ids within the GPUs of the node it ran on, and
/// CUDA_VISIBLE_DEVICES naming exactly those ids (set and empty for no GPU, so that CUDA
/// sees no device).
bool report(const GpuCapacity& capacity, const std::string& who, double num_gpus, const GpuView& v) {
  std::cout << "  " << who << "  node " << capacity.index_of(v.node_id) << "  pid " << v.pid << "  gpu_ids ["
            << join(v.gpu_ids) << "]  CUDA_VISIBLE_DEVICES="
            << (v.cuda_visible_devices ? "\"" + *v.cuda_visible_devices + "\"" : "(unset)") << "\n";
  size_t expected_count = num_gpus == 0 ? 0 : num_gpus < 1 ? 1 : static_cast<size_t>(num_gpus);
  int node_gpus = capacity.gpus_on(v.node_id);
  bool ok = node_gpus >= 0 && v.gpu_ids.size() == expected_count && v.assigned_gpus == num_gpus &&
            v.cuda_visible_devices == join(v.gpu_ids);
  for (int id : v.gpu_ids) ok = ok && id >= 0 && id < node_gpus;
  if (!ok)
    std::cout << "    ^ expected " << expected_count << " device id(s) below " << node_gpus << " and GPU " << num_gpus
              << "\n";
  return ok;
}

int run() {
  bool ok = true;
  const GpuCapacity capacity;
  capacity.print();
  if (capacity.largest_node() == 0) {
    std::cout << "  no live node offers a GPU\n";
    return 1;
  }

  ok = report(capacity, "task  num_gpus=0  ", 0, gantry::task(gpu_task).options({.num_gpus = 0}).remote().get()) && ok;

  std::vector<gantry::ObjectRef<GpuView>> whole;
  for (int i = 0; i < 2; ++i) whole.push_back(gantry::task(gpu_task).options({.num_gpus = 1}).remote());
  for (const GpuView& v : gantry::get(whole)) ok = report(capacity, "task  num_gpus=1  ", 1, v) && ok;

  std::vector<gantry::ObjectRef<GpuView>> halves;
  for (int i = 0; i < 4; ++i) halves.push_back(gantry::task(gpu_task).options({.num_gpus = 0.5}).remote());
  for (const GpuView& v : gantry::get(halves)) ok = report(capacity, "task  num_gpus=0.5", 0.5, v) && ok;

  // As many GPUs as the largest node has: only such a node can run it.
  const int largest = capacity.largest_node();
  const std::string all_of_one = "task  num_gpus=" + std::to_string(largest) + "  ";
  GpuView big = gantry::task(gpu_task).options({.num_gpus = static_cast<double>(largest)}).remote().get();
  ok = report(capacity, all_of_one, largest, big) && ok;

  // As many actors as the cluster has GPUs, all alive at once, each holding one GPU for
  // life, placed where the scheduler likes: every GPU is taken once, so each node must
  // host as many as it has GPUs, and on each node no two may share a device.
  std::vector<gantry::ActorHandle<GpuActor>> actors;
  for (const GpuCapacity::Node& node : capacity.nodes())
    for (int i = 0; i < node.gpus; ++i) actors.push_back(gantry::actor(GpuActor::create).options({.num_gpus = 1}).remote());
  std::vector<gantry::ObjectRef<GpuView>> actor_views;
  for (auto& actor : actors) actor_views.push_back(actor.task(&GpuActor::view).remote());
  std::map<std::string, std::map<int, int>> holders;  // node id -> device id -> actors holding it
  std::map<std::string, int> hosted;                  // node id -> actors on it
  for (auto& view : actor_views) {
    GpuView v = view.get(std::chrono::seconds(60));
    ok = report(capacity, "actor num_gpus=1  ", 1, v) && ok;
    ++hosted[v.node_id];
    for (int id : v.gpu_ids) ++holders[v.node_id][id];
  }
  for (const GpuCapacity::Node& node : capacity.nodes())
    if (hosted[node.id] != node.gpus) {
      std::cout << "    ^ node " << capacity.index_of(node.id) << " hosts " << hosted[node.id] << " one-GPU actors but has "
                << node.gpus << " GPUs\n";
      ok = false;
    }
  for (const auto& [node_id, devices] : holders)
    for (const auto& [id, count] : devices)
      if (count > 1) {
        std::cout << "    ^ " << count << " live actors share device " << id << " of node "
                  << capacity.index_of(node_id) << "\n";
        ok = false;
      }
  for (auto& actor : actors) gantry::kill(actor);

  const int too_many = largest + 1;
  const std::string infeasible = "task  num_gpus=" + std::to_string(too_many) + "  ";
  try {
    // The error may come at submission or at get; the timeout keeps a queued task from
    // hanging the example.
    gantry::task(gpu_task).options({.num_gpus = static_cast<double>(too_many)}).remote().get(std::chrono::seconds(30));
    std::cout << "  " << infeasible << "  ran, but no node has more than " << largest << " GPUs\n";
    ok = false;
  } catch (const gantry::InfeasibleError& e) {
    std::cout << "  " << infeasible << "  gantry::InfeasibleError: " << e.what() << "\n";
  } catch (const gantry::GetTimeoutError&) {
    std::cout << "  " << infeasible << "  still pending after 30 s, expected gantry::InfeasibleError\n";
    ok = false;
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Under `gantry job submit` init joins that cluster and num_gpus is not used: the
  // nodes' own GPUs count.
  gantry::init(argc, argv, {.num_gpus = kLocalGpus});  // workers serve here and never return
  int status = 1;
  try {
    status = run();
  } catch (const std::exception& e) {
    std::cerr << "gpu_tasks: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
