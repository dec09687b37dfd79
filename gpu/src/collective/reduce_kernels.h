#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gantry/collective.h"

namespace gantry::collective::detail {

/// float32 <-> IEEE half and bfloat16 (round to nearest even; NaN stays NaN).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bfloat16_to_float(uint16_t b);
uint16_t float_to_bfloat16(float f);

/// dst[i] = op(dst[i], src[i]) for `count` elements of `type`. kAvg combines as kSum
/// (finish with `divide`). Half types round after each combine; use the float32
/// accumulators below when combining more than two inputs.
void reduce_into(void* dst, const void* src, size_t count, DataType type, ReduceOp op);

/// dst[i] = op(a[i], b[i]); dst may alias a or b.
void reduce_pair(void* dst, const void* a, const void* b, size_t count, DataType type, ReduceOp op);

/// dst[i] = op over inputs[0..n)[i], accumulated in float32 for the half types and in the
/// element type otherwise, then divided by `divisor` when op is kAvg (pass world_size).
/// dst may alias an input.
void reduce_many(void* dst, const void* const* inputs, size_t n, size_t count, DataType type, ReduceOp op,
                 int divisor);

/// data[i] /= divisor (integer types: truncating division), for kAvg.
void divide(void* data, size_t count, DataType type, int divisor);

/// Whether `type` is float16 or bfloat16 (reduced through float32 copies).
inline bool is_half(DataType type) { return type == DataType::kFloat16 || type == DataType::kBFloat16; }
/// `count` float16 or bfloat16 elements as float32, and back (rounding to nearest even).
std::vector<float> widen(const void* data, size_t count, DataType type);
void narrow(const float* in, void* data, size_t count, DataType type);

}  // namespace gantry::collective::detail
