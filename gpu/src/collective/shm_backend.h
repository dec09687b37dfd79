#pragma once

/// The shared-memory backend's knobs, for its tests. Production code calls
/// `make_shm_backend(context)` (backend.h), which uses the defaults.

#include <cstddef>
#include <memory>

#include "collective/backend.h"

namespace gantry::collective::detail {

/// The store key under which rank 0 publishes the name of the group's /dev/shm segment.
inline constexpr char kShmSegmentKey[] = "shm/segment";

struct ShmBackendOptions {
  /// Bytes of one staging slot (each rank has two): one pipeline step moves this much of
  /// a buffer. Rounded down to whole cache lines per rank; 0 picks the default. Small
  /// values make tests cross many chunk boundaries with small buffers. Rank 0's choice
  /// holds for the group.
  size_t slot_bytes = 0;
};

/// `make_shm_backend` with explicit options.
std::unique_ptr<Backend> make_shm_backend(const BackendContext& context, const ShmBackendOptions& options);

}  // namespace gantry::collective::detail
