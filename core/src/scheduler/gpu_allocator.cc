#include "scheduler/gpu_allocator.h"

#include <map>
#include <stdexcept>
#include <string>

namespace gantry::internal {

namespace {

constexpr FixedPoint kWholeDevice = FixedPoint::whole(1);

}  // namespace

GpuAllocator::GpuAllocator(int num_devices) {
  if (num_devices < 0) {
    throw std::invalid_argument("number of GPU devices must not be negative, got " +
                                std::to_string(num_devices));
  }
  free_.assign(num_devices, kWholeDevice);
  capacity_ = free_;
}

GpuAllocator::GpuAllocator(std::vector<FixedPoint> capacities) : free_(capacities), capacity_(std::move(capacities)) {
  for (FixedPoint c : capacity_)
    if (c <= FixedPoint() || c > kWholeDevice)
      throw std::invalid_argument("a GPU device's capacity must be in (0, 1], got " + c.to_string());
}

bool GpuAllocator::is_valid_request(FixedPoint amount) {
  return amount >= FixedPoint() && (amount < kWholeDevice || amount.is_whole());
}

std::optional<std::vector<GpuShare>> GpuAllocator::allocate(FixedPoint amount) {
  if (!is_valid_request(amount)) return std::nullopt;
  std::vector<GpuShare> shares;
  if (amount == FixedPoint()) return shares;

  if (amount.is_whole()) {
    const int64_t wanted = amount.raw() / kResourceUnit;
    for (int d = 0; d < num_devices() && static_cast<int64_t>(shares.size()) < wanted; ++d) {
      if (free_[d] == kWholeDevice) shares.push_back({d, kWholeDevice});
    }
    if (static_cast<int64_t>(shares.size()) < wanted) return std::nullopt;
    for (const GpuShare& s : shares) free_[s.device] = FixedPoint();
    return shares;
  }

  // Best fit among opened devices; strict < keeps the lowest id on ties.
  int chosen = -1;
  for (int d = 0; d < num_devices(); ++d) {
    const FixedPoint f = free_[d];
    if (f < kWholeDevice && f >= amount && (chosen < 0 || f < free_[chosen])) chosen = d;
  }
  if (chosen < 0) {
    for (int d = 0; d < num_devices(); ++d) {
      if (free_[d] == kWholeDevice) {
        chosen = d;
        break;
      }
    }
  }
  if (chosen < 0) return std::nullopt;
  free_[chosen] -= amount;
  shares.push_back({chosen, amount});
  return shares;
}

void GpuAllocator::release(const std::vector<GpuShare>& shares) {
  // Sum per device first: validating shares one by one would miss two shares that together
  // overfill a device, and would leave earlier shares applied when a later one is bad.
  std::map<int, FixedPoint> returned;
  for (const GpuShare& s : shares) {
    if (s.device < 0 || s.device >= num_devices()) {
      throw std::logic_error("released GPU share names device " + std::to_string(s.device) +
                             " but the node has " + std::to_string(num_devices()) + " devices");
    }
    if (s.amount <= FixedPoint()) {
      throw std::logic_error("released GPU share of device " + std::to_string(s.device) +
                             " has non-positive amount " + s.amount.to_string());
    }
    returned[s.device] += s.amount;
  }
  for (const auto& [device, amount] : returned) {
    if (free_[device] + amount > capacity_[device]) {
      throw std::logic_error("releasing " + amount.to_string() + " of GPU " +
                             std::to_string(device) + " which has " + free_[device].to_string() +
                             " free would exceed its capacity of " + capacity_[device].to_string() +
                             " (released twice?)");
    }
  }
  for (const auto& [device, amount] : returned) free_[device] += amount;
}

FixedPoint GpuAllocator::available(int device) const {
  if (device < 0 || device >= num_devices()) {
    throw std::out_of_range("GPU device " + std::to_string(device) +
                            " does not exist; the node has " + std::to_string(num_devices()));
  }
  return free_[device];
}

}  // namespace gantry::internal
