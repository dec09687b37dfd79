#include "scheduler/resource_set.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace gantry::internal {
namespace {

FixedPoint fp(double v) { return FixedPoint::from_double(v); }

// Expects `fn` to throw E with a message containing `needle`.
template <typename E, typename Fn>
void expect_throw_with(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception mentioning \"" << needle << "\"";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(FixedPointTest, TenTenthsSumToExactlyOne) {
  double as_double = 0;
  FixedPoint sum;
  for (int i = 0; i < 10; ++i) {
    as_double += 0.1;
    sum += fp(0.1);
  }
  ASSERT_NE(as_double, 1.0) << "premise: doubles drift, which is why quantities are fixed-point";
  EXPECT_EQ(sum, FixedPoint::whole(1));
  EXPECT_EQ(sum.raw(), kResourceUnit);
  EXPECT_EQ(sum.to_double(), 1.0);
}

TEST(FixedPointTest, FourQuartersAreOneAndSubtractBackToZero) {
  FixedPoint q = fp(0.25);
  EXPECT_EQ(q + q + q + q, FixedPoint::whole(1));
  FixedPoint rest = FixedPoint::whole(1);
  for (int i = 0; i < 4; ++i) rest -= q;
  EXPECT_EQ(rest, FixedPoint());
}

TEST(FixedPointTest, RoundsToNearestTenThousandth) {
  EXPECT_EQ(fp(0.00004).raw(), 0);
  EXPECT_EQ(fp(0.00005).raw(), 1);
  EXPECT_EQ(fp(0.00006).raw(), 1);
  EXPECT_EQ(fp(0.123456).raw(), 1235);
  EXPECT_EQ(fp(1.0 / 3).raw(), 3333);
  EXPECT_EQ(fp(2.0 / 3).raw(), 6667);
  EXPECT_EQ(fp(2.00014999).raw(), 20001);
  EXPECT_EQ(fp(1073741824).raw(), int64_t{1073741824} * kResourceUnit);
  EXPECT_EQ(fp(0.3).to_double(), 0.3);
}

TEST(FixedPointTest, ToStringIsShortestExactDecimal) {
  EXPECT_EQ(FixedPoint().to_string(), "0");
  EXPECT_EQ(fp(1).to_string(), "1");
  EXPECT_EQ(fp(0.5).to_string(), "0.5");
  EXPECT_EQ(fp(0.25).to_string(), "0.25");
  EXPECT_EQ(fp(2.0001).to_string(), "2.0001");
  EXPECT_EQ(fp(10.01).to_string(), "10.01");
  EXPECT_EQ(fp(0.0001).to_string(), "0.0001");
  EXPECT_EQ(fp(1073741824).to_string(), "1073741824");
  EXPECT_EQ(FixedPoint::from_raw(-5000).to_string(), "-0.5");
  EXPECT_EQ(FixedPoint::from_raw(-20001).to_string(), "-2.0001");
  EXPECT_EQ(FixedPoint::from_raw(std::numeric_limits<int64_t>::min()).to_string(),
            "-922337203685477.5808");
}

TEST(FixedPointTest, ComparisonsAndIsWhole) {
  EXPECT_LT(fp(0.25), fp(0.5));
  EXPECT_LE(fp(0.5), fp(0.5));
  EXPECT_GT(fp(1), fp(0.9999));
  EXPECT_GE(fp(1), FixedPoint::whole(1));
  EXPECT_NE(fp(0.1), fp(0.1001));
  EXPECT_TRUE(fp(3).is_whole());
  EXPECT_TRUE(FixedPoint().is_whole());
  EXPECT_FALSE(fp(1.5).is_whole());
  EXPECT_FALSE(fp(0.0001).is_whole());
  static_assert(FixedPoint::whole(2) - FixedPoint::from_raw(5000) == FixedPoint::from_raw(15000));
}

TEST(FixedPointTest, RejectsInvalidDoublesWithTheValue) {
  expect_throw_with<std::invalid_argument>([] { fp(-1); }, "quantity -1 is negative");
  expect_throw_with<std::invalid_argument>([] { fp(-0.00001); }, "is negative");
  expect_throw_with<std::invalid_argument>([] { fp(std::nan("")); }, "not a number");
  expect_throw_with<std::invalid_argument>([] { fp(std::numeric_limits<double>::infinity()); },
                                           "quantity inf is infinite");
  expect_throw_with<std::invalid_argument>([] { fp(-std::numeric_limits<double>::infinity()); },
                                           "infinite");
  expect_throw_with<std::invalid_argument>([] { fp(9e14 + 1); },
                                           "quantity 900000000000001 is above the maximum 9e+14");
  EXPECT_EQ(fp(9e14).raw(), int64_t{900'000'000'000'000} * kResourceUnit);
  EXPECT_EQ(fp(-0.0).raw(), 0);
}

TEST(ResourceSetTest, FromDoublesDropsZerosAndKeepsTheRest) {
  ResourceSet s = ResourceSet::from_doubles({{kCpu, 2}, {kGpu, 0.5}, {"TPU", 0}});
  EXPECT_EQ(s.get(kCpu), fp(2));
  EXPECT_EQ(s.get(kGpu), fp(0.5));
  EXPECT_EQ(s.get("TPU"), FixedPoint());
  EXPECT_EQ(s.quantities().size(), 2u);
  EXPECT_EQ(s.quantities().count("TPU"), 0u);
}

TEST(ResourceSetTest, FromDoublesNamesTheBadResource) {
  expect_throw_with<std::invalid_argument>(
      [] {
        ResourceSet::from_doubles({{kCpu, 1}, {kGpu, -1}});
      },
      "resource 'GPU': quantity -1 is negative");
  expect_throw_with<std::invalid_argument>(
      [] {
        ResourceSet::from_doubles({{"TPU", std::nan("")}});
      },
      "resource 'TPU': quantity is not a number");
  expect_throw_with<std::invalid_argument>(
      [] {
        ResourceSet::from_doubles({{kMemory, 1e15}});
      },
      "resource 'memory': quantity 1e+15 is above");
  expect_throw_with<std::invalid_argument>(
      [] {
        ResourceSet::from_doubles({{"", 1}});
      },
      "name must not be empty");
}

TEST(ResourceSetTest, SetGetAndZeroRemoves) {
  ResourceSet s;
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s.get(kGpu), FixedPoint());
  s.set(kGpu, fp(0.5));
  EXPECT_FALSE(s.empty());
  EXPECT_EQ(s.get(kGpu), fp(0.5));
  s.set(kGpu, FixedPoint());
  EXPECT_TRUE(s.empty());
  EXPECT_EQ(s, ResourceSet());
  expect_throw_with<std::invalid_argument>([&] { s.set(kCpu, FixedPoint::from_raw(-1)); },
                                           "resource 'CPU': quantity -0.0001 is negative");
  EXPECT_TRUE(s.empty());
}

TEST(ResourceSetTest, ContainsComparesEveryRequestedQuantity) {
  ResourceSet node = ResourceSet::from_doubles({{kCpu, 4}, {kGpu, 1}});
  EXPECT_TRUE(node.contains(ResourceSet()));
  EXPECT_TRUE(node.contains(node));
  EXPECT_TRUE(node.contains(ResourceSet::from_doubles({{kCpu, 4}})));
  EXPECT_TRUE(node.contains(ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 0.25}})));
  EXPECT_FALSE(node.contains(ResourceSet::from_doubles({{kCpu, 4.0001}})));
  EXPECT_FALSE(node.contains(ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 1.5}})));
  EXPECT_FALSE(node.contains(ResourceSet::from_doubles({{"TPU", 0.0001}})));
  EXPECT_FALSE(ResourceSet().contains(ResourceSet::from_doubles({{kCpu, 1}})));
}

TEST(ResourceSetTest, AddAndSubtract) {
  ResourceSet s = ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 0.5}});
  s += ResourceSet::from_doubles({{kGpu, 0.25}, {"TPU", 2}});
  EXPECT_EQ(s, ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 0.75}, {"TPU", 2}}));

  s -= ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 0.25}});
  EXPECT_EQ(s, ResourceSet::from_doubles({{kGpu, 0.5}, {"TPU", 2}}));
  EXPECT_EQ(s.quantities().count(kCpu), 0u) << "a quantity reaching zero is not stored";

  s += s;
  EXPECT_EQ(s, ResourceSet::from_doubles({{kGpu, 1}, {"TPU", 4}}));
  s -= s;
  EXPECT_TRUE(s.empty());
}

TEST(ResourceSetTest, SubtractThatWouldGoNegativeThrowsAndChangesNothing) {
  ResourceSet s = ResourceSet::from_doubles({{kCpu, 2}, {kGpu, 0.5}});
  const ResourceSet before = s;
  expect_throw_with<std::logic_error>(
      [&] {
        s -= ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 0.75}});
      },
      "GPU would be negative");
  EXPECT_EQ(s, before);
  expect_throw_with<std::logic_error>(
      [&] {
        s -= ResourceSet::from_doubles({{"TPU", 1}});
      },
      "TPU would be negative");
  EXPECT_EQ(s, before);
}

TEST(ResourceSetTest, ToStringSortsByName) {
  EXPECT_EQ(ResourceSet().to_string(), "{}");
  EXPECT_EQ(ResourceSet::from_doubles({{kMemory, 1073741824}, {kGpu, 0.5}, {kCpu, 1}}).to_string(),
            "{CPU: 1, GPU: 0.5, memory: 1073741824}");
}

TEST(ResourceSetTest, ToDoublesRoundTrips) {
  const std::map<std::string, double> m = {{kCpu, 1.5}, {kGpu, 0.25}, {"TPU", 0.1}};
  ResourceSet s = ResourceSet::from_doubles(m);
  EXPECT_EQ(s.to_doubles(), m);
  EXPECT_EQ(ResourceSet::from_doubles(s.to_doubles()), s);
}

TEST(ResourceSetTest, EqualityIgnoresZeroEntries) {
  EXPECT_EQ(ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 0}}),
            ResourceSet::from_doubles({{kCpu, 1}}));
  EXPECT_NE(ResourceSet::from_doubles({{kCpu, 1}}), ResourceSet::from_doubles({{kCpu, 1.0001}}));
}

}  // namespace
}  // namespace gantry::internal
