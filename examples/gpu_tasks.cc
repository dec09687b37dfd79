// GPU scheduling with two *logical* GPUs, so it runs on any machine: tasks and actors ask
// for whole or fractional GPUs, and each reports the device ids it was given and the
// CUDA_VISIBLE_DEVICES its worker process sees. A task asking for no GPU sees none, and a
// request no node can ever meet fails with gantry::InfeasibleError.
//
//     gpu_tasks

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "gantry/gantry.h"

/// What a task or actor learns about its GPUs from inside its worker process.
struct GpuView {
  std::vector<int> gpu_ids;                         ///< gantry::get_gpu_ids()
  std::optional<std::string> cuda_visible_devices;  ///< empty optional when the variable is unset
  double assigned_gpus = 0;                         ///< the GPU quantity the scheduler assigned
  int pid = 0;

  GANTRY_FIELDS(gpu_ids, cuda_visible_devices, assigned_gpus, pid);
};

namespace {

GpuView current_gpu_view() {
  gantry::RuntimeContext context = gantry::runtime_context();
  GpuView view;
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

constexpr int kLogicalGpus = 2;

std::string join(const std::vector<int>& ids) {
  std::ostringstream out;
  for (size_t i = 0; i < ids.size(); ++i) out << (i == 0 ? "" : ",") << ids[i];
  return out.str();
}

/// Prints one report and checks it against the request: as many devices as asked for
/// (one for a fraction), ids in range, and CUDA_VISIBLE_DEVICES naming exactly those ids
/// (set and empty for no GPU, so that CUDA sees no device).
bool report(const std::string& who, double num_gpus, const GpuView& v) {
  std::cout << "  " << who << "  pid " << v.pid << "  gpu_ids [" << join(v.gpu_ids)
            << "]  CUDA_VISIBLE_DEVICES="
            << (v.cuda_visible_devices ? "\"" + *v.cuda_visible_devices + "\"" : "(unset)") << "\n";
  size_t expected_count = num_gpus == 0 ? 0 : num_gpus < 1 ? 1 : static_cast<size_t>(num_gpus);
  bool ok = v.gpu_ids.size() == expected_count && v.assigned_gpus == num_gpus &&
            v.cuda_visible_devices == join(v.gpu_ids);
  for (int id : v.gpu_ids) ok = ok && id >= 0 && id < kLogicalGpus;
  if (!ok) std::cout << "    ^ expected " << expected_count << " device id(s) and GPU " << num_gpus << "\n";
  return ok;
}

int run() {
  bool ok = true;
  std::cout << "gpu_tasks: a node with " << kLogicalGpus << " logical GPUs\n";

  ok = report("task  num_gpus=0  ", 0, gantry::task(gpu_task).options({.num_gpus = 0}).remote().get()) && ok;

  std::vector<gantry::ObjectRef<GpuView>> whole;
  for (int i = 0; i < 2; ++i) whole.push_back(gantry::task(gpu_task).options({.num_gpus = 1}).remote());
  for (const GpuView& v : gantry::get(whole)) ok = report("task  num_gpus=1  ", 1, v) && ok;

  std::vector<gantry::ObjectRef<GpuView>> halves;
  for (int i = 0; i < 4; ++i) halves.push_back(gantry::task(gpu_task).options({.num_gpus = 0.5}).remote());
  for (const GpuView& v : gantry::get(halves)) ok = report("task  num_gpus=0.5", 0.5, v) && ok;

  // Both actors are alive at once and each holds one GPU for life, so they must have
  // been given different devices.
  auto first = gantry::actor(GpuActor::create).options({.num_gpus = 1}).remote();
  auto second = gantry::actor(GpuActor::create).options({.num_gpus = 1}).remote();
  GpuView a = first.task(&GpuActor::view).remote().get();
  GpuView b = second.task(&GpuActor::view).remote().get();
  ok = report("actor num_gpus=1  ", 1, a) && ok;
  ok = report("actor num_gpus=1  ", 1, b) && ok;
  if (a.gpu_ids == b.gpu_ids) {
    std::cout << "    ^ two live actors share a device\n";
    ok = false;
  }
  gantry::kill(first);
  gantry::kill(second);

  try {
    // The error may come at submission or at get; the timeout keeps a queued task from
    // hanging the example.
    gantry::task(gpu_task).options({.num_gpus = 3}).remote().get(std::chrono::seconds(30));
    std::cout << "  task  num_gpus=3    ran, but only " << kLogicalGpus << " GPUs exist\n";
    ok = false;
  } catch (const gantry::InfeasibleError& e) {
    std::cout << "  task  num_gpus=3    gantry::InfeasibleError: " << e.what() << "\n";
  } catch (const gantry::GetTimeoutError&) {
    std::cout << "  task  num_gpus=3    still pending after 30 s, expected gantry::InfeasibleError\n";
    ok = false;
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  gantry::init(argc, argv, {.num_gpus = kLogicalGpus});  // workers serve here and never return
  int status = 1;
  try {
    status = run();
  } catch (const std::exception& e) {
    std::cerr << "gpu_tasks: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
