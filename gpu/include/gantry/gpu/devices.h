#pragma once

#include <string>
#include <vector>

namespace gantry::gpu {

/// One GPU as the CUDA runtime reports it.
struct DeviceInfo {
  int index = 0;
  std::string name;
  size_t total_memory = 0;
};

/// The GPUs this process can see. Uses the CUDA runtime when gantry is built with CUDA;
/// returns an empty list, never an error, when there is no driver or no device.
/// `note`, when given, receives why no device was found (for logs).
std::vector<DeviceInfo> detect_devices(std::string* note = nullptr);

/// True when gantry was built with CUDA and NCCL.
bool built_with_cuda();

}  // namespace gantry::gpu
