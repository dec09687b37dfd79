#include "gantry/gpu/devices.h"

#ifdef GANTRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace gantry::gpu {

bool built_with_cuda() {
#ifdef GANTRY_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

std::vector<DeviceInfo> detect_devices(std::string* note) {
  std::vector<DeviceInfo> devices;
#ifdef GANTRY_HAVE_CUDA
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // No driver or no device is a normal state on CPU machines, not a failure.
    if (note != nullptr) *note = cudaGetErrorString(err);
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    devices.push_back({i, prop.name, prop.totalGlobalMem});
  }
  if (devices.empty() && note != nullptr) *note = "the CUDA runtime reports no devices";
#else
  if (note != nullptr) *note = "gantry was built without CUDA";
#endif
  return devices;
}

}  // namespace gantry::gpu
