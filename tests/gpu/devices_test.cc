#include "gantry/gpu/devices.h"

#include <gtest/gtest.h>

namespace gantry::gpu {
namespace {

TEST(DetectDevices, ReportsZeroDevicesWithReasonInsteadOfFailing) {
  std::string note;
  std::vector<DeviceInfo> devices = detect_devices(&note);
  if (!devices.empty()) {
    for (size_t i = 0; i < devices.size(); ++i) {
      EXPECT_EQ(devices[i].index, static_cast<int>(i));
      EXPECT_FALSE(devices[i].name.empty());
      EXPECT_GT(devices[i].total_memory, 0u);
    }
    GTEST_SKIP() << devices.size() << " GPU(s) present; the no-device path is not exercised here";
  }
  EXPECT_FALSE(note.empty()) << "an empty device list must say why";
}

TEST(DetectDevices, CudaPathRunsOnlyWithADevice) {
  if (!built_with_cuda()) GTEST_SKIP() << "built without CUDA";
  std::vector<DeviceInfo> devices = detect_devices();
  if (devices.empty()) GTEST_SKIP() << "no CUDA device on this machine";
  EXPECT_GE(devices.front().total_memory, size_t{1} << 20);
}

}  // namespace
}  // namespace gantry::gpu
