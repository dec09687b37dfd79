#include "agent/host_monitor.h"

#include <dlfcn.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

namespace gantry::internal {

HostMonitor::HostMonitor(std::chrono::milliseconds min_window) : min_window_(min_window) {
  have_times_ = read_cpu_times(&last_times_);
  last_at_ = std::chrono::steady_clock::now();
}

bool HostMonitor::read_cpu_times(CpuTimes* out) {
  std::ifstream in("/proc/stat");
  std::string label;
  if (!(in >> label) || label != "cpu") return false;
  // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
  uint64_t v[8] = {};
  for (uint64_t& x : v)
    if (!(in >> x)) return false;
  out->total = 0;
  for (uint64_t x : v) out->total += x;
  out->busy = out->total - v[3] - v[4];
  return true;
}

HostSample HostMonitor::sample() {
  HostSample s;
  s.cpu_cores = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto now = std::chrono::steady_clock::now();
    if (now - last_at_ >= min_window_) {
      CpuTimes t;
      if (read_cpu_times(&t)) {
        if (have_times_ && t.total > last_times_.total)
          last_utilization_ = static_cast<double>(t.busy - last_times_.busy) /
                              static_cast<double>(t.total - last_times_.total);
        last_times_ = t;
        have_times_ = true;
        last_at_ = now;
      }
    }
    s.cpu_utilization = last_utilization_;
  }
  std::ifstream mem("/proc/meminfo");
  std::string line;
  uint64_t total_kib = 0, available_kib = 0;
  while (std::getline(mem, line)) {
    std::istringstream fields(line);
    std::string key;
    uint64_t kib = 0;
    fields >> key >> kib;
    if (key == "MemTotal:") total_kib = kib;
    if (key == "MemAvailable:") available_kib = kib;
  }
  if (total_kib > 0 && available_kib <= total_kib) {
    s.memory_total = total_kib * 1024;
    s.memory_used = (total_kib - available_kib) * 1024;
  }
  return s;
}

// NVML declares these in nvml.h, which this toolkit does not ship; the few calls used are
// declared here with NVML's documented C signatures.
namespace {
using NvmlReturn = int;
constexpr NvmlReturn kNvmlSuccess = 0;
struct NvmlDeviceOpaque;
using NvmlDevice = NvmlDeviceOpaque*;
struct NvmlUtilization {
  unsigned int gpu;
  unsigned int memory;
};
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
}  // namespace

struct GpuMonitor::Api {
  void* handle = nullptr;
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  NvmlReturn (*count)(unsigned int*) = nullptr;
  NvmlReturn (*by_index)(unsigned int, NvmlDevice*) = nullptr;
  NvmlReturn (*by_uuid)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*name)(NvmlDevice, char*, unsigned int) = nullptr;
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization*) = nullptr;
  NvmlReturn (*memory)(NvmlDevice, NvmlMemory*) = nullptr;
};

GpuMonitor::GpuMonitor(const std::string& library) {
  void* handle = ::dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    reason_ = why ? why : library + ": cannot be loaded";
    return;
  }
  auto api = std::make_unique<Api>();
  api->handle = handle;
  bool complete = true;
  auto bind = [&](auto& fn, const char* symbol) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(handle, symbol));
    if (fn == nullptr) {
      complete = false;
      if (reason_.empty()) reason_ = library + " lacks " + symbol;
    }
  };
  bind(api->init, "nvmlInit_v2");
  bind(api->shutdown, "nvmlShutdown");
  bind(api->count, "nvmlDeviceGetCount_v2");
  bind(api->by_index, "nvmlDeviceGetHandleByIndex_v2");
  bind(api->by_uuid, "nvmlDeviceGetHandleByUUID");
  bind(api->name, "nvmlDeviceGetName");
  bind(api->utilization, "nvmlDeviceGetUtilizationRates");
  bind(api->memory, "nvmlDeviceGetMemoryInfo");
  if (!complete) {
    ::dlclose(handle);
    return;
  }
  if (NvmlReturn rc = api->init(); rc != kNvmlSuccess) {
    reason_ = "nvmlInit failed with NVML error " + std::to_string(rc) + " (no driver loaded?)";
    ::dlclose(handle);
    return;
  }
  api_ = std::move(api);
}

GpuMonitor::~GpuMonitor() {
  if (!api_) return;
  api_->shutdown();
  ::dlclose(api_->handle);
}

std::vector<GpuSample> GpuMonitor::sample(const std::vector<std::string>& devices) {
  std::vector<GpuSample> out(devices.size());
  if (!api_) return out;
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < devices.size(); ++i) {
    const std::string& d = devices[i];
    NvmlDevice device = nullptr;
    NvmlReturn rc = -1;
    if (!d.empty() && d.find_first_not_of("0123456789") == std::string::npos)
      rc = api_->by_index(static_cast<unsigned int>(std::stoul(d)), &device);
    else
      rc = api_->by_uuid(d.c_str(), &device);
    if (rc != kNvmlSuccess) continue;
    char name[96] = {};
    if (api_->name(device, name, sizeof name) == kNvmlSuccess) out[i].name = name;
    NvmlUtilization u{};
    if (api_->utilization(device, &u) == kNvmlSuccess) out[i].utilization = u.gpu / 100.0;
    NvmlMemory m{};
    if (api_->memory(device, &m) == kNvmlSuccess) {
      out[i].memory_total = m.total;
      out[i].memory_used = m.used;
    }
  }
  return out;
}

std::vector<std::string> node_gpu_devices(int n, const std::string& visible) {
  std::vector<std::string> listed;
  if (!visible.empty()) {
    std::stringstream in(visible);
    std::string item;
    while (std::getline(in, item, ',')) listed.push_back(item);
  }
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i)
    out.push_back(static_cast<size_t>(i) < listed.size() ? listed[static_cast<size_t>(i)] : std::to_string(i));
  return out;
}

}  // namespace gantry::internal
