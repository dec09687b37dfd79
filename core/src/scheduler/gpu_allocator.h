#pragma once

#include <optional>
#include <vector>

#include "scheduler/resource_set.h"

namespace gantry::internal {

/// Part of one GPU device held by an allocation: `amount` of device `device` (1 is all of it).
struct GpuShare {
  int device = 0;
  FixedPoint amount;

  bool operator==(const GpuShare&) const = default;
};

/// Tracks the free capacity of each GPU device of one node (1 per device, ids 0..n-1) and
/// decides which devices a GPU request gets. Not thread-safe: the owner holds a lock.
///
///     GpuAllocator gpus(2);
///     auto shares = gpus.allocate(FixedPoint::from_double(0.25));  // {{0, 0.25}}
///     gpus.release(*shares);
class GpuAllocator {
 public:
  /// A node with `num_devices` completely free devices. Throws std::invalid_argument when
  /// `num_devices` is negative.
  explicit GpuAllocator(int num_devices);
  /// Devices 0..n-1 whose free capacities start at `capacities` (each in (0, 1]): a
  /// placement-group bundle holding half of a device is a device of capacity 0.5. Throws
  /// std::invalid_argument for a capacity outside (0, 1].
  explicit GpuAllocator(std::vector<FixedPoint> capacities);

  int num_devices() const { return static_cast<int>(free_.size()); }

  /// True for the amounts a request may ask for: 0, a fraction below 1 (one shared device),
  /// or a whole number (that many whole devices). 1.5 is not valid: it would need a device
  /// and a half, which no worker can be pinned to.
  static bool is_valid_request(FixedPoint amount);

  /// Chooses devices for `amount` and marks them used.
  /// - A whole number n >= 1 takes n completely free devices, lowest ids first.
  /// - A fraction below 1 goes on one device: the partly used device with the least free
  ///   capacity that still fits it (ties: lowest id), else the lowest-id completely free
  ///   device. Fractional work so fills opened devices before opening another, leaving
  ///   whole devices free for whole requests.
  /// Returns an empty vector for 0, and nullopt, changing nothing, when `amount` is not
  /// valid or does not fit now.
  std::optional<std::vector<GpuShare>> allocate(FixedPoint amount);

  /// Gives back what `allocate` returned. Throws std::logic_error, changing nothing, when a
  /// share names an unknown device, is not positive, or would free more than a device has
  /// (a double release).
  void release(const std::vector<GpuShare>& shares);

  /// Free capacity of `device`, between 0 and 1. Throws std::out_of_range for an unknown id.
  FixedPoint available(int device) const;

 private:
  std::vector<FixedPoint> free_;      // free capacity per device id, each in [0, capacity]
  std::vector<FixedPoint> capacity_;  // per device id, each in (0, 1]
};

}  // namespace gantry::internal
