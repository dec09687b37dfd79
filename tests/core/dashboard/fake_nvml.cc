// A stand-in for libnvidia-ml with NVML's C signatures and two devices of fixed figures,
// for testing GpuMonitor's dlopen path on machines without a driver.
#include <cstring>

namespace {
struct FakeDevice {
  const char* name;
  const char* uuid;
  unsigned int utilization;
  unsigned long long total, used;
};
FakeDevice g_devices[2] = {{"Fake H200", "GPU-fake-0", 87, 150000000000ull, 20000000000ull},
                           {"Fake L4", "GPU-fake-1", 5, 24000000000ull, 1000000000ull}};
int g_initialized = 0;
}  // namespace

extern "C" {
struct FakeUtilization {
  unsigned int gpu, memory;
};
struct FakeMemory {
  unsigned long long total, free, used;
};
int nvmlInit_v2() {
  g_initialized = 1;
  return 0;
}
int nvmlShutdown() {
  g_initialized = 0;
  return 0;
}
int nvmlDeviceGetCount_v2(unsigned int* n) {
  *n = 2;
  return 0;
}
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void** device) {
  if (!g_initialized || i >= 2) return 2;  // NVML_ERROR_INVALID_ARGUMENT
  *device = &g_devices[i];
  return 0;
}
int nvmlDeviceGetHandleByUUID(const char* uuid, void** device) {
  for (auto& d : g_devices)
    if (std::strcmp(d.uuid, uuid) == 0) {
      *device = &d;
      return 0;
    }
  return 6;  // NVML_ERROR_NOT_FOUND
}
int nvmlDeviceGetName(void* device, char* name, unsigned int length) {
  std::strncpy(name, static_cast<FakeDevice*>(device)->name, length - 1);
  return 0;
}
int nvmlDeviceGetUtilizationRates(void* device, FakeUtilization* u) {
  u->gpu = static_cast<FakeDevice*>(device)->utilization;
  u->memory = 0;
  return 0;
}
int nvmlDeviceGetMemoryInfo(void* device, FakeMemory* m) {
  auto* d = static_cast<FakeDevice*>(device);
  m->total = d->total;
  m->used = d->used;
  m->free = d->total - d->used;
  return 0;
}
}
