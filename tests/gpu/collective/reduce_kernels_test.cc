#include "collective/reduce_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace col = gantry::collective;
using namespace gantry::collective::detail;

TEST(HalfConversion, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(half_to_float(float_to_half(f)))) << h;
      continue;
    }
    EXPECT_EQ(float_to_half(f), h) << "half bits " << h << " -> " << f;
  }
}

TEST(HalfConversion, KnownValuesAndRounding) {
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(float_to_half(1e6f), 0x7c00);  // overflow: infinity
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  // 1 + 2^-11 lies halfway between 1 and the next half; ties go to even (1.0).
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
}

TEST(BFloat16Conversion, RoundTripsAndRounds) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    float f = bfloat16_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_bfloat16(f), b);
  }
  EXPECT_EQ(bfloat16_to_float(float_to_bfloat16(3.0f)), 3.0f);
  EXPECT_TRUE(std::isnan(bfloat16_to_float(float_to_bfloat16(std::numeric_limits<float>::quiet_NaN()))));
}

template <typename T>
void check_ops(col::DataType type) {
  std::mt19937 gen(7);
  const size_t n = 3001;  // odd, more than one accumulator block
  std::vector<std::vector<T>> inputs(3, std::vector<T>(n));
  for (auto& in : inputs)
    for (auto& v : in) v = static_cast<T>(gen() % 7 + 1);
  for (col::ReduceOp op : {col::ReduceOp::kSum, col::ReduceOp::kAvg, col::ReduceOp::kMin, col::ReduceOp::kMax,
                           col::ReduceOp::kProduct}) {
    std::vector<T> out(n);
    const void* ptrs[3] = {inputs[0].data(), inputs[1].data(), inputs[2].data()};
    reduce_many(out.data(), ptrs, 3, n, type, op, 3);
    std::vector<T> pair = inputs[0];
    reduce_into(pair.data(), inputs[1].data(), n, type, op);
    reduce_into(pair.data(), inputs[2].data(), n, type, op);
    if (op == col::ReduceOp::kAvg) divide(pair.data(), n, type, 3);
    for (size_t i = 0; i < n; ++i) {
      T a = inputs[0][i], b = inputs[1][i], c = inputs[2][i];
      T want{};
      switch (op) {
        case col::ReduceOp::kSum: want = static_cast<T>(a + b + c); break;
        case col::ReduceOp::kAvg: want = static_cast<T>(static_cast<T>(a + b + c) / static_cast<T>(3)); break;
        case col::ReduceOp::kMin: want = std::min({a, b, c}); break;
        case col::ReduceOp::kMax: want = std::max({a, b, c}); break;
        case col::ReduceOp::kProduct: want = static_cast<T>(a * b * c); break;
      }
      ASSERT_EQ(out[i], want) << col::to_string(type) << " " << col::to_string(op) << " at " << i;
      ASSERT_EQ(pair[i], want) << col::to_string(type) << " " << col::to_string(op) << " pairwise at " << i;
    }
  }
}

TEST(ReduceKernels, EveryOpOnEveryExactType) {
  check_ops<float>(col::DataType::kFloat32);
  check_ops<double>(col::DataType::kFloat64);
  check_ops<int32_t>(col::DataType::kInt32);
  check_ops<int64_t>(col::DataType::kInt64);
  check_ops<uint8_t>(col::DataType::kUInt8);
}

TEST(ReduceKernels, HalfTypesAccumulateInFloat32) {
  // Summing 2048 ones in half precision stalls at 2048 pairwise only past 2048; with a
  // float32 accumulator the sum of 4 inputs of 0.1 rounds once.
  const size_t n = 1500;
  for (auto [type, to_f, from_f] :
       {std::tuple{col::DataType::kFloat16, &half_to_float, &float_to_half},
        std::tuple{col::DataType::kBFloat16, &bfloat16_to_float, &float_to_bfloat16}}) {
    std::vector<std::vector<uint16_t>> inputs(4, std::vector<uint16_t>(n));
    for (size_t r = 0; r < 4; ++r)
      for (size_t i = 0; i < n; ++i) inputs[r][i] = from_f(0.1f * static_cast<float>(r + 1) + static_cast<float>(i % 5));
    std::vector<uint16_t> out(n);
    const void* ptrs[4] = {inputs[0].data(), inputs[1].data(), inputs[2].data(), inputs[3].data()};
    reduce_many(out.data(), ptrs, 4, n, type, col::ReduceOp::kAvg, 4);
    for (size_t i = 0; i < n; ++i) {
      float sum = 0;
      for (size_t r = 0; r < 4; ++r) sum += to_f(inputs[r][i]);
      ASSERT_EQ(out[i], from_f(sum / 4)) << col::to_string(type) << " at " << i;
    }
  }
}
