#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace gantry::internal {

/// The machine's CPU and memory use, from /proc.
struct HostSample {
  double cpu_utilization = -1;  // busy share of all CPUs since the previous sample, 0..1; -1 unknown
  int cpu_cores = 0;
  uint64_t memory_used = 0;     // MemTotal - MemAvailable; 0 unknown
  uint64_t memory_total = 0;
};

/// Samples /proc/stat and /proc/meminfo. CPU use is measured between calls: a call within
/// `min_window` of the previous one answers the previous figure. Thread-safe.
class HostMonitor {
 public:
  explicit HostMonitor(std::chrono::milliseconds min_window = std::chrono::milliseconds(200));
  HostSample sample();

 private:
  struct CpuTimes {
    uint64_t busy = 0;
    uint64_t total = 0;
  };
  static bool read_cpu_times(CpuTimes* out);

  const std::chrono::milliseconds min_window_;
  std::mutex mu_;  // guards the fields below
  CpuTimes last_times_;
  bool have_times_ = false;
  std::chrono::steady_clock::time_point last_at_;
  double last_utilization_ = -1;
};

/// One GPU's figures, as NVML gives them.
struct GpuSample {
  std::string name;
  double utilization = -1;  // 0..1; -1 unknown
  uint64_t memory_used = 0;
  uint64_t memory_total = 0;
};

/// GPU figures through NVML, loaded at run time with dlopen (no NVML header or library is
/// needed to build). Without a driver it is simply unavailable. Thread-safe.
class GpuMonitor {
 public:
  /// `library`: the NVML shared library to load (tests load a stand-in).
  explicit GpuMonitor(const std::string& library = "libnvidia-ml.so.1");
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor&) = delete;
  GpuMonitor& operator=(const GpuMonitor&) = delete;

  bool available() const { return api_ != nullptr; }
  /// Why it is unavailable ("libnvidia-ml.so.1: cannot open shared object file ...").
  const std::string& unavailable_reason() const { return reason_; }
  /// Figures of the devices named by `devices` (NVML indices, or UUIDs as in
  /// CUDA_VISIBLE_DEVICES); an entry NVML cannot answer has unknown figures.
  std::vector<GpuSample> sample(const std::vector<std::string>& devices);

 private:
  struct Api;
  std::unique_ptr<Api> api_;
  std::string reason_;
  std::mutex mu_;  // NVML itself is thread-safe; this keeps calls in order for stand-ins
};

/// The devices behind a node's GPU ids 0..n-1: the entries of CUDA_VISIBLE_DEVICES in
/// `visible` (when set), else "0".."n-1".
std::vector<std::string> node_gpu_devices(int n, const std::string& visible);

}  // namespace gantry::internal
