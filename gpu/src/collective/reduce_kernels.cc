#include "collective/reduce_kernels.h"

#include <algorithm>
#include <cstring>

namespace gantry::collective::detail {
namespace {

template <typename T>
struct Combine {
  ReduceOp op;
  T operator()(T a, T b) const {
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg:
        return static_cast<T>(a + b);
      case ReduceOp::kProduct:
        return static_cast<T>(a * b);
      case ReduceOp::kMin:
        return b < a ? b : a;
      case ReduceOp::kMax:
        return a < b ? b : a;
    }
    return a;
  }
};

// One loop per op so each inner loop is a plain vectorisable body.
template <typename T>
void pair_loop(T* __restrict dst, const T* a, const T* b, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(a[i] + b[i]);
      return;
    case ReduceOp::kProduct:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(a[i] * b[i]);
      return;
    case ReduceOp::kMin:
      for (size_t i = 0; i < n; ++i) dst[i] = b[i] < a[i] ? b[i] : a[i];
      return;
    case ReduceOp::kMax:
      for (size_t i = 0; i < n; ++i) dst[i] = a[i] < b[i] ? b[i] : a[i];
      return;
  }
}

// dst[i] = op(dst[i], src[i]) in place; src does not overlap dst.
template <typename T>
void inplace_loop(T* dst, const T* __restrict src, size_t n, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(dst[i] + src[i]);
      return;
    case ReduceOp::kProduct:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(dst[i] * src[i]);
      return;
    case ReduceOp::kMin:
      for (size_t i = 0; i < n; ++i) dst[i] = src[i] < dst[i] ? src[i] : dst[i];
      return;
    case ReduceOp::kMax:
      for (size_t i = 0; i < n; ++i) dst[i] = dst[i] < src[i] ? src[i] : dst[i];
      return;
  }
}

// dst may be a or b exactly (every op is commutative, so either runs in place); any other
// overlap is not allowed.
template <typename T>
void pair_typed(void* dst, const void* a, const void* b, size_t n, ReduceOp op) {
  T* d = static_cast<T*>(dst);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  if (d == x) return inplace_loop<T>(d, y, n, op);
  if (d == y) return inplace_loop<T>(d, x, n, op);
  pair_loop<T>(d, x, y, n, op);
}

using Convert = float (*)(uint16_t);
using Back = uint16_t (*)(float);

constexpr size_t kBlock = 1024;  // float32 accumulator block: 4 KiB, stays in L1

template <Convert to_f, Back from_f>
void pair_half(void* dst, const void* a, const void* b, size_t n, ReduceOp op) {
  auto* d = static_cast<uint16_t*>(dst);
  const auto* x = static_cast<const uint16_t*>(a);
  const auto* y = static_cast<const uint16_t*>(b);
  Combine<float> c{op};
  for (size_t i = 0; i < n; ++i) d[i] = from_f(c(to_f(x[i]), to_f(y[i])));
}

template <typename T>
void many_typed(void* dst, const void* const* inputs, size_t k, size_t n, ReduceOp op, int divisor) {
  T* d = static_cast<T*>(dst);
  if (k == 0) return;
  T acc[kBlock];
  for (size_t base = 0; base < n; base += kBlock) {
    size_t m = std::min(kBlock, n - base);
    std::memcpy(acc, static_cast<const T*>(inputs[0]) + base, m * sizeof(T));
    for (size_t j = 1; j < k; ++j) inplace_loop<T>(acc, static_cast<const T*>(inputs[j]) + base, m, op);
    if (op == ReduceOp::kAvg)
      for (size_t i = 0; i < m; ++i) acc[i] = static_cast<T>(acc[i] / static_cast<T>(divisor));
    std::memcpy(d + base, acc, m * sizeof(T));
  }
}

template <Convert to_f, Back from_f>
void many_half(void* dst, const void* const* inputs, size_t k, size_t n, ReduceOp op, int divisor) {
  auto* d = static_cast<uint16_t*>(dst);
  if (k == 0) return;
  float acc[kBlock];
  float other[kBlock];
  for (size_t base = 0; base < n; base += kBlock) {
    size_t m = std::min(kBlock, n - base);
    const auto* first = static_cast<const uint16_t*>(inputs[0]) + base;
    for (size_t i = 0; i < m; ++i) acc[i] = to_f(first[i]);
    for (size_t j = 1; j < k; ++j) {
      const auto* in = static_cast<const uint16_t*>(inputs[j]) + base;
      for (size_t i = 0; i < m; ++i) other[i] = to_f(in[i]);
      inplace_loop<float>(acc, other, m, op);
    }
    if (op == ReduceOp::kAvg)
      for (size_t i = 0; i < m; ++i) acc[i] /= static_cast<float>(divisor);
    for (size_t i = 0; i < m; ++i) d[base + i] = from_f(acc[i]);
  }
}

template <typename T>
void divide_typed(void* data, size_t n, int divisor) {
  T* d = static_cast<T*>(data);
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<T>(d[i] / static_cast<T>(divisor));
}

template <Convert to_f, Back from_f>
void divide_half(void* data, size_t n, int divisor) {
  auto* d = static_cast<uint16_t*>(data);
  for (size_t i = 0; i < n; ++i) d[i] = from_f(to_f(d[i]) / static_cast<float>(divisor));
}

}  // namespace

float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  uint32_t abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00);  // NaN
  if (abs >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // overflow to inf
  if (abs < 0x38800000) {                                              // subnormal or zero
    if (abs < 0x33000000) return sign;
    uint32_t exp = abs >> 23;
    uint32_t mant = (abs & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - exp;  // 14 + (112 - exp)
    uint32_t half_mant = mant >> (shift);
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1))) ++half_mant;
    return static_cast<uint16_t>(sign | half_mant);
  }
  uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1);  // round to nearest even
  return static_cast<uint16_t>(sign | ((rounded - (112u << 23)) >> 13));
}

float bfloat16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_bfloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

void reduce_pair(void* dst, const void* a, const void* b, size_t count, DataType type, ReduceOp op) {
  switch (type) {
    case DataType::kFloat32: return pair_typed<float>(dst, a, b, count, op);
    case DataType::kFloat64: return pair_typed<double>(dst, a, b, count, op);
    case DataType::kInt32: return pair_typed<int32_t>(dst, a, b, count, op);
    case DataType::kInt64: return pair_typed<int64_t>(dst, a, b, count, op);
    case DataType::kUInt8: return pair_typed<uint8_t>(dst, a, b, count, op);
    case DataType::kFloat16: return pair_half<half_to_float, float_to_half>(dst, a, b, count, op);
    case DataType::kBFloat16: return pair_half<bfloat16_to_float, float_to_bfloat16>(dst, a, b, count, op);
  }
}

void reduce_into(void* dst, const void* src, size_t count, DataType type, ReduceOp op) {
  reduce_pair(dst, dst, src, count, type, op);
}

void reduce_many(void* dst, const void* const* inputs, size_t n, size_t count, DataType type, ReduceOp op,
                 int divisor) {
  switch (type) {
    case DataType::kFloat32: return many_typed<float>(dst, inputs, n, count, op, divisor);
    case DataType::kFloat64: return many_typed<double>(dst, inputs, n, count, op, divisor);
    case DataType::kInt32: return many_typed<int32_t>(dst, inputs, n, count, op, divisor);
    case DataType::kInt64: return many_typed<int64_t>(dst, inputs, n, count, op, divisor);
    case DataType::kUInt8: return many_typed<uint8_t>(dst, inputs, n, count, op, divisor);
    case DataType::kFloat16: return many_half<half_to_float, float_to_half>(dst, inputs, n, count, op, divisor);
    case DataType::kBFloat16:
      return many_half<bfloat16_to_float, float_to_bfloat16>(dst, inputs, n, count, op, divisor);
  }
}

std::vector<float> widen(const void* data, size_t count, DataType type) {
  std::vector<float> out(count);
  const auto* in = static_cast<const uint16_t*>(data);
  if (type == DataType::kFloat16) {
    for (size_t i = 0; i < count; ++i) out[i] = half_to_float(in[i]);
  } else {
    for (size_t i = 0; i < count; ++i) out[i] = bfloat16_to_float(in[i]);
  }
  return out;
}

void narrow(const float* in, void* data, size_t count, DataType type) {
  auto* out = static_cast<uint16_t*>(data);
  if (type == DataType::kFloat16) {
    for (size_t i = 0; i < count; ++i) out[i] = float_to_half(in[i]);
  } else {
    for (size_t i = 0; i < count; ++i) out[i] = float_to_bfloat16(in[i]);
  }
}

void divide(void* data, size_t count, DataType type, int divisor) {
  switch (type) {
    case DataType::kFloat32: return divide_typed<float>(data, count, divisor);
    case DataType::kFloat64: return divide_typed<double>(data, count, divisor);
    case DataType::kInt32: return divide_typed<int32_t>(data, count, divisor);
    case DataType::kInt64: return divide_typed<int64_t>(data, count, divisor);
    case DataType::kUInt8: return divide_typed<uint8_t>(data, count, divisor);
    case DataType::kFloat16: return divide_half<half_to_float, float_to_half>(data, count, divisor);
    case DataType::kBFloat16: return divide_half<bfloat16_to_float, float_to_bfloat16>(data, count, divisor);
  }
}

}  // namespace gantry::collective::detail
