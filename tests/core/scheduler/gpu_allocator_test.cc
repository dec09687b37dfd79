#include "scheduler/gpu_allocator.h"

#include <gtest/gtest.h>

#include <optional>
#include <random>
#include <stdexcept>
#include <vector>

namespace gantry::internal {
namespace {

FixedPoint fp(double v) { return FixedPoint::from_double(v); }

// The device of a fractional allocation, failing the test when it did not fit.
int device_of(const std::optional<std::vector<GpuShare>>& shares) {
  if (!shares || shares->size() != 1) {
    ADD_FAILURE() << "expected exactly one share";
    return -1;
  }
  return shares->front().device;
}

std::vector<FixedPoint> snapshot(const GpuAllocator& gpus) {
  std::vector<FixedPoint> free;
  for (int d = 0; d < gpus.num_devices(); ++d) free.push_back(gpus.available(d));
  return free;
}

TEST(GpuAllocatorTest, ValidRequestsAreZeroFractionsOrWholeNumbers) {
  EXPECT_TRUE(GpuAllocator::is_valid_request(FixedPoint()));
  EXPECT_TRUE(GpuAllocator::is_valid_request(fp(0.0001)));
  EXPECT_TRUE(GpuAllocator::is_valid_request(fp(0.25)));
  EXPECT_TRUE(GpuAllocator::is_valid_request(fp(0.9999)));
  EXPECT_TRUE(GpuAllocator::is_valid_request(fp(1)));
  EXPECT_TRUE(GpuAllocator::is_valid_request(fp(8)));
  EXPECT_FALSE(GpuAllocator::is_valid_request(fp(1.5)));
  EXPECT_FALSE(GpuAllocator::is_valid_request(fp(2.0001)));
  EXPECT_FALSE(GpuAllocator::is_valid_request(FixedPoint::from_raw(-2500)));
}

TEST(GpuAllocatorTest, StartsWithEveryDeviceFree) {
  GpuAllocator gpus(3);
  EXPECT_EQ(gpus.num_devices(), 3);
  for (int d = 0; d < 3; ++d) EXPECT_EQ(gpus.available(d), fp(1));
  EXPECT_THROW(gpus.available(3), std::out_of_range);
  EXPECT_THROW(gpus.available(-1), std::out_of_range);
  EXPECT_THROW(GpuAllocator(-1), std::invalid_argument);
  EXPECT_EQ(GpuAllocator(0).num_devices(), 0);
}

TEST(GpuAllocatorTest, FourQuartersShareDeviceZeroAndTheFifthOpensDeviceOne) {
  GpuAllocator gpus(2);
  for (int i = 0; i < 4; ++i) {
    auto shares = gpus.allocate(fp(0.25));
    ASSERT_TRUE(shares);
    EXPECT_EQ(*shares, (std::vector<GpuShare>{{0, fp(0.25)}})) << "request " << i;
  }
  EXPECT_EQ(gpus.available(0), FixedPoint()) << "four quarters fill a device exactly";
  EXPECT_EQ(gpus.available(1), fp(1));
  EXPECT_EQ(device_of(gpus.allocate(fp(0.25))), 1);
  EXPECT_EQ(gpus.available(1), fp(0.75));
}

TEST(GpuAllocatorTest, FilledDeviceThenNewDeviceTakesWhatFits) {
  GpuAllocator gpus(2);
  EXPECT_EQ(device_of(gpus.allocate(fp(0.5))), 0);
  EXPECT_EQ(device_of(gpus.allocate(fp(0.5))), 0);
  EXPECT_EQ(device_of(gpus.allocate(fp(0.7))), 1);
  EXPECT_EQ(device_of(gpus.allocate(fp(0.3))), 1);
  EXPECT_EQ(gpus.available(0), FixedPoint());
  EXPECT_EQ(gpus.available(1), FixedPoint());
  EXPECT_FALSE(gpus.allocate(fp(0.0001)));
}

TEST(GpuAllocatorTest, FractionGoesToTheFullestOpenedDeviceThatFits) {
  GpuAllocator gpus(3);
  EXPECT_EQ(device_of(gpus.allocate(fp(0.5))), 0);  // dev 0: 0.5 free
  EXPECT_EQ(device_of(gpus.allocate(fp(0.7))), 1);  // does not fit dev 0: opens dev 1, 0.3 free
  // Both opened devices fit 0.3; dev 1 has less left, so dev 0 keeps room for a bigger share.
  EXPECT_EQ(device_of(gpus.allocate(fp(0.3))), 1);
  EXPECT_EQ(device_of(gpus.allocate(fp(0.5))), 0);
  EXPECT_EQ(snapshot(gpus), (std::vector<FixedPoint>{FixedPoint(), FixedPoint(), fp(1)}));
}

TEST(GpuAllocatorTest, BestFitSkipsDevicesTooFullAndBreaksTiesByLowestId) {
  GpuAllocator gpus(4);
  ASSERT_TRUE(gpus.allocate(fp(0.9)));  // dev 0: 0.1 free
  ASSERT_TRUE(gpus.allocate(fp(0.6)));  // dev 1: 0.4 free
  ASSERT_TRUE(gpus.allocate(fp(0.6)));  // dev 2: 0.4 free
  EXPECT_EQ(device_of(gpus.allocate(fp(0.2))), 1) << "dev 0 is too full; dev 1 ties dev 2";
  EXPECT_EQ(device_of(gpus.allocate(fp(0.3))), 2) << "dev 1 has only 0.2 left";
  EXPECT_EQ(device_of(gpus.allocate(fp(0.1))), 0) << "exact fit on the fullest device";
  EXPECT_EQ(device_of(gpus.allocate(fp(0.5))), 3) << "no opened device fits: open the next";
}

TEST(GpuAllocatorTest, FractionPrefersAnOpenedDeviceOverALowerFreeOne) {
  GpuAllocator gpus(2);
  auto first = gpus.allocate(fp(0.6));
  ASSERT_EQ(device_of(first), 0);
  ASSERT_EQ(device_of(gpus.allocate(fp(0.6))), 1);
  gpus.release(*first);  // dev 0 free again, dev 1 partly used
  EXPECT_EQ(device_of(gpus.allocate(fp(0.3))), 1);
  EXPECT_EQ(gpus.available(0), fp(1)) << "the free device stays whole for whole requests";
}

TEST(GpuAllocatorTest, WholeRequestsTakeWholeFreeDevicesLowestFirst) {
  GpuAllocator gpus(4);
  auto two = gpus.allocate(fp(2));
  ASSERT_TRUE(two);
  EXPECT_EQ(*two, (std::vector<GpuShare>{{0, fp(1)}, {1, fp(1)}}));
  ASSERT_EQ(device_of(gpus.allocate(fp(0.25))), 2);
  // Dev 2 is partly used, so a whole device must be dev 3.
  auto one = gpus.allocate(fp(1));
  ASSERT_TRUE(one);
  EXPECT_EQ(*one, (std::vector<GpuShare>{{3, fp(1)}}));
  EXPECT_FALSE(gpus.allocate(fp(1))) << "dev 2 has 0.75 free but a whole GPU needs a whole device";
}

TEST(GpuAllocatorTest, WholeRequestFailsWhenOnlyPartlyUsedDevicesRemainAndChangesNothing) {
  GpuAllocator gpus(3);
  // Fill dev 0 then dev 1 completely, then put a sliver on dev 2 and free dev 0 and dev 1
  // except for a sliver each: 2.7 GPUs are free in total, but no device is whole.
  auto a = gpus.allocate(fp(0.9));
  auto b = gpus.allocate(fp(0.9));
  auto c = gpus.allocate(fp(0.9));
  ASSERT_EQ(device_of(a), 0);
  ASSERT_EQ(device_of(b), 1);
  ASSERT_EQ(device_of(c), 2);
  gpus.release({{0, fp(0.8)}, {1, fp(0.8)}, {2, fp(0.8)}});
  const auto before = snapshot(gpus);
  EXPECT_EQ(before, (std::vector<FixedPoint>{fp(0.9), fp(0.9), fp(0.9)}));
  EXPECT_FALSE(gpus.allocate(fp(1)));
  EXPECT_FALSE(gpus.allocate(fp(2)));
  EXPECT_EQ(snapshot(gpus), before);
  EXPECT_EQ(device_of(gpus.allocate(fp(0.9))), 0) << "fractions still fit";
}

TEST(GpuAllocatorTest, WholeRequestLargerThanTheFreeDevicesFailsAndChangesNothing) {
  GpuAllocator gpus(2);
  EXPECT_FALSE(gpus.allocate(fp(3)));
  ASSERT_TRUE(gpus.allocate(fp(1)));
  EXPECT_FALSE(gpus.allocate(fp(2)));
  EXPECT_EQ(snapshot(gpus), (std::vector<FixedPoint>{FixedPoint(), fp(1)}));
}

TEST(GpuAllocatorTest, ReleaseRestoresCapacity) {
  GpuAllocator gpus(3);
  auto whole = gpus.allocate(fp(2));
  auto part = gpus.allocate(fp(0.25));
  ASSERT_TRUE(whole && part);
  EXPECT_EQ(device_of(part), 2);
  gpus.release(*whole);
  EXPECT_EQ(snapshot(gpus), (std::vector<FixedPoint>{fp(1), fp(1), fp(0.75)}));
  gpus.release(*part);
  EXPECT_EQ(snapshot(gpus), (std::vector<FixedPoint>{fp(1), fp(1), fp(1)}));
  auto all = gpus.allocate(fp(3));
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), 3u);
}

TEST(GpuAllocatorTest, InvalidAmountsAreRejectedAndChangeNothing) {
  GpuAllocator gpus(4);
  EXPECT_FALSE(gpus.allocate(fp(1.5)));
  EXPECT_FALSE(gpus.allocate(fp(2.25)));
  EXPECT_FALSE(gpus.allocate(FixedPoint::from_raw(-1)));
  EXPECT_EQ(snapshot(gpus), (std::vector<FixedPoint>(4, fp(1))));
}

TEST(GpuAllocatorTest, ZeroAmountGetsNoDevices) {
  GpuAllocator none(0);
  auto shares = none.allocate(FixedPoint());
  ASSERT_TRUE(shares);
  EXPECT_TRUE(shares->empty());
  EXPECT_FALSE(none.allocate(fp(0.1)));
  EXPECT_FALSE(none.allocate(fp(1)));
}

TEST(GpuAllocatorTest, BadReleaseThrowsAndChangesNothing) {
  GpuAllocator gpus(2);
  auto shares = gpus.allocate(fp(0.5));
  ASSERT_TRUE(shares);
  gpus.release(*shares);
  const auto before = snapshot(gpus);
  EXPECT_THROW(gpus.release(*shares), std::logic_error) << "double release";
  EXPECT_THROW(gpus.release({{2, fp(0.5)}}), std::logic_error) << "unknown device";
  EXPECT_THROW(gpus.release({{0, FixedPoint()}}), std::logic_error) << "empty share";
  EXPECT_EQ(snapshot(gpus), before);
  ASSERT_TRUE(gpus.allocate(fp(0.5)));
  // Each share alone fits dev 0, together they would overfill it; the valid dev 1 share
  // listed first must not be applied either.
  EXPECT_THROW(gpus.release({{1, fp(0.1)}, {0, fp(0.3)}, {0, fp(0.3)}}), std::logic_error);
  EXPECT_EQ(snapshot(gpus), (std::vector<FixedPoint>{fp(0.5), fp(1)}));
}

// What allocate must do, written the slow and obvious way, to check the real one against.
std::optional<int> expected_fraction_device(const std::vector<FixedPoint>& free,
                                            FixedPoint amount) {
  std::optional<int> best;
  for (int d = 0; d < static_cast<int>(free.size()); ++d) {
    bool opened = free[d] < fp(1);
    if (opened && free[d] >= amount && (!best || free[d] < free[*best])) best = d;
  }
  if (best) return best;
  for (int d = 0; d < static_cast<int>(free.size()); ++d) {
    if (free[d] == fp(1)) return d;
  }
  return std::nullopt;
}

TEST(GpuAllocatorTest, RandomSequencesFollowTheRulesAndConserveCapacity) {
  const std::vector<double> amounts = {0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9999, 1, 2, 3};
  for (int devices : {1, 2, 4, 8}) {
    for (unsigned seed = 1; seed <= 20; ++seed) {
      SCOPED_TRACE(::testing::Message() << "devices " << devices << " seed " << seed);
      std::mt19937 rng(seed);
      GpuAllocator gpus(devices);
      std::vector<std::vector<GpuShare>> live;
      for (int step = 0; step < 400; ++step) {
        const auto before = snapshot(gpus);
        if (!live.empty() && rng() % 3 == 0) {
          size_t i = rng() % live.size();
          gpus.release(live[i]);
          live.erase(live.begin() + i);
        } else {
          const FixedPoint amount = fp(amounts[rng() % amounts.size()]);
          auto shares = gpus.allocate(amount);
          if (amount.is_whole()) {
            int whole_free = 0;
            for (FixedPoint f : before) whole_free += f == fp(1);
            ASSERT_EQ(shares.has_value(), whole_free >= amount.raw() / kResourceUnit);
          } else {
            auto want = expected_fraction_device(before, amount);
            ASSERT_EQ(shares.has_value(), want.has_value());
            if (shares) {
              ASSERT_EQ(shares->front().device, *want);
            }
          }
          if (shares) {
            live.push_back(*shares);
          } else {
            ASSERT_EQ(snapshot(gpus), before);
          }
        }
        // Each device's used capacity is exactly the sum of the live shares on it.
        std::vector<FixedPoint> used(devices);
        for (const auto& shares : live) {
          for (const GpuShare& s : shares) used[s.device] += s.amount;
        }
        for (int d = 0; d < devices; ++d) {
          ASSERT_GE(gpus.available(d), FixedPoint());
          ASSERT_LE(gpus.available(d), fp(1));
          ASSERT_EQ(gpus.available(d) + used[d], fp(1)) << "device " << d;
        }
      }
      for (const auto& shares : live) gpus.release(shares);
      EXPECT_EQ(snapshot(gpus), std::vector<FixedPoint>(devices, fp(1)));
    }
  }
}

}  // namespace
}  // namespace gantry::internal
