#pragma once

#include <cstddef>
#include <cstdint>

namespace gantry::internal {

/// CRC-32C (Castagnoli) of `size` bytes, continuing from `crc` (0 to start). Uses the
/// SSE 4.2 instruction where the CPU has it (many GB/s), else a table.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace gantry::internal
