#include "scheduler/node_resources.h"

#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <vector>

namespace gantry::internal {
namespace {

FixedPoint fp(double v) { return FixedPoint::from_double(v); }
ResourceSet rs(const std::map<std::string, double>& m) { return ResourceSet::from_doubles(m); }

std::vector<FixedPoint> device_free(const NodeResources& node) {
  std::vector<FixedPoint> free;
  for (int d = 0; d < node.gpus().num_devices(); ++d) free.push_back(node.gpus().available(d));
  return free;
}

TEST(NodeResourcesTest, GpuTotalMustMatchTheDevices) {
  EXPECT_NO_THROW(NodeResources(rs({{kCpu, 4}, {kGpu, 2}}), 2));
  EXPECT_NO_THROW(NodeResources(rs({{kCpu, 4}}), 0));
  EXPECT_THROW(NodeResources(rs({{kCpu, 4}, {kGpu, 2}}), 1), std::invalid_argument);
  EXPECT_THROW(NodeResources(rs({{kCpu, 4}}), 2), std::invalid_argument);
  EXPECT_THROW(NodeResources(rs({{kGpu, 1.5}}), 1), std::invalid_argument);
  EXPECT_THROW(NodeResources(ResourceSet(), -1), std::invalid_argument);
}

TEST(NodeResourcesTest, AllocateSubtractsAndReleaseRestores) {
  const ResourceSet total = rs({{kCpu, 4}, {kGpu, 2}, {kMemory, 1 << 30}});
  NodeResources node(total, 2);
  EXPECT_EQ(node.total(), total);
  EXPECT_EQ(node.available(), total);

  auto a = node.allocate(rs({{kCpu, 1}, {kGpu, 0.5}, {kMemory, 1 << 20}}));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->resources, rs({{kCpu, 1}, {kGpu, 0.5}, {kMemory, 1 << 20}}));
  EXPECT_EQ(a->gpu_ids(), std::vector<int>{0});
  EXPECT_EQ(node.available(), rs({{kCpu, 3}, {kGpu, 1.5}, {kMemory, (1 << 30) - (1 << 20)}}));
  EXPECT_EQ(node.total(), total);

  auto b = node.allocate(rs({{kCpu, 1}, {kGpu, 1}}));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->gpu_ids(), std::vector<int>{1});

  node.release(*a);
  node.release(*b);
  EXPECT_EQ(node.available(), total);
  EXPECT_EQ(device_free(node), (std::vector<FixedPoint>{fp(1), fp(1)}));
}

TEST(NodeResourcesTest, GpuIdsListTheAssignedDevices) {
  NodeResources node(rs({{kCpu, 8}, {kGpu, 4}}), 4);
  auto cpu_only = node.allocate(rs({{kCpu, 1}}));
  ASSERT_TRUE(cpu_only);
  EXPECT_TRUE(cpu_only->gpu_ids().empty());
  EXPECT_TRUE(cpu_only->gpus.empty());

  auto two = node.allocate(rs({{kGpu, 2}}));
  ASSERT_TRUE(two);
  EXPECT_EQ(two->gpu_ids(), (std::vector<int>{0, 1}));

  auto quarter = node.allocate(rs({{kGpu, 0.25}}));
  ASSERT_TRUE(quarter);
  EXPECT_EQ(quarter->gpu_ids(), std::vector<int>{2});

  Allocation by_hand{rs({{kGpu, 1}}), {{3, fp(0.5)}, {1, fp(0.25)}, {3, fp(0.25)}}};
  EXPECT_EQ(by_hand.gpu_ids(), (std::vector<int>{1, 3}));
}

TEST(NodeResourcesTest, CpuFitsButGpuDoesNotChangesNothing) {
  NodeResources node(rs({{kCpu, 4}, {kGpu, 1}}), 1);
  ASSERT_TRUE(node.allocate(rs({{kGpu, 0.75}})));
  const ResourceSet before = node.available();
  EXPECT_FALSE(node.allocate(rs({{kCpu, 1}, {kGpu, 0.5}})));
  EXPECT_EQ(node.available(), before);
  EXPECT_EQ(device_free(node), std::vector<FixedPoint>{fp(0.25)});
}

TEST(NodeResourcesTest, GpuFreeInTotalButSplitOverDevicesChangesNothing) {
  NodeResources node(rs({{kCpu, 4}, {kGpu, 2}}), 2);
  ASSERT_TRUE(node.allocate(rs({{kGpu, 0.5}})));
  ASSERT_TRUE(node.allocate(rs({{kGpu, 0.6}})));  // does not fit dev 0's 0.5: opens dev 1
  ASSERT_EQ(device_free(node), (std::vector<FixedPoint>{fp(0.5), fp(0.4)}));
  const ResourceSet before = node.available();
  EXPECT_EQ(before.get(kGpu), fp(0.9));
  // 0.9 GPU is free in total, so the aggregate check passes; no single device has 0.9.
  EXPECT_FALSE(node.allocate(rs({{kCpu, 1}, {kGpu, 0.9}})));
  EXPECT_EQ(node.available(), before);
  EXPECT_EQ(device_free(node), (std::vector<FixedPoint>{fp(0.5), fp(0.4)}));
}

TEST(NodeResourcesTest, GpuFitsButCpuDoesNotChangesNothing) {
  NodeResources node(rs({{kCpu, 2}, {kGpu, 2}}), 2);
  ASSERT_TRUE(node.allocate(rs({{kCpu, 2}})));
  EXPECT_FALSE(node.allocate(rs({{kCpu, 1}, {kGpu, 1}})));
  EXPECT_EQ(node.available(), rs({{kGpu, 2}}));
  EXPECT_EQ(device_free(node), (std::vector<FixedPoint>{fp(1), fp(1)}));
}

TEST(NodeResourcesTest, InvalidGpuAmountIsNeverAllocated) {
  NodeResources node(rs({{kCpu, 4}, {kGpu, 4}}), 4);
  EXPECT_FALSE(node.allocate(rs({{kGpu, 1.5}})));
  EXPECT_EQ(node.available(), node.total());
}

TEST(NodeResourcesTest, InfeasibleReasonNamesWhatIsWrong) {
  NodeResources node(rs({{kCpu, 4}, {kGpu, 2}, {kMemory, 1 << 30}}), 2);
  EXPECT_EQ(node.infeasible_reason(ResourceSet()), "");
  EXPECT_EQ(node.infeasible_reason(rs({{kCpu, 4}, {kGpu, 2}})), "");
  EXPECT_EQ(node.infeasible_reason(rs({{kGpu, 3}})), "asks for GPU: 3 but the node has GPU: 2");
  EXPECT_EQ(node.infeasible_reason(rs({{"TPU", 1}})), "asks for TPU: 1 but the node has no TPU");
  EXPECT_EQ(node.infeasible_reason(rs({{kGpu, 1.5}})),
            "asks for GPU: 1.5: GPU requests above 1 must be whole numbers");
  EXPECT_EQ(node.infeasible_reason(rs({{kCpu, 4.5}, {"TPU", 1}})),
            "asks for CPU: 4.5 but the node has CPU: 4; asks for TPU: 1 but the node has no TPU");

  NodeResources cpu_node(rs({{kCpu, 4}}), 0);
  EXPECT_EQ(cpu_node.infeasible_reason(rs({{kGpu, 0.5}})),
            "asks for GPU: 0.5 but the node has no GPU");
}

TEST(NodeResourcesTest, BusyIsNotInfeasible) {
  NodeResources node(rs({{kCpu, 1}, {kGpu, 1}}), 1);
  ASSERT_TRUE(node.allocate(rs({{kCpu, 1}, {kGpu, 1}})));
  const ResourceSet request = rs({{kCpu, 1}, {kGpu, 1}});
  EXPECT_FALSE(node.allocate(request));
  EXPECT_EQ(node.infeasible_reason(request), "");
}

TEST(NodeResourcesTest, BadReleaseThrowsAndChangesNothing) {
  NodeResources node(rs({{kCpu, 4}, {kGpu, 2}}), 2);
  auto a = node.allocate(rs({{kCpu, 1}, {kGpu, 0.5}}));
  ASSERT_TRUE(a);
  node.release(*a);
  EXPECT_THROW(node.release(*a), std::logic_error) << "double release";
  EXPECT_EQ(node.available(), node.total());
  EXPECT_EQ(device_free(node), (std::vector<FixedPoint>{fp(1), fp(1)}));

  auto b = node.allocate(rs({{kCpu, 1}, {kGpu, 1}}));
  ASSERT_TRUE(b);
  const ResourceSet before = node.available();
  Allocation wrong_shares{b->resources, {{0, fp(0.5)}}};
  EXPECT_THROW(node.release(wrong_shares), std::logic_error);
  Allocation wrong_device{b->resources, {{1, fp(1)}}};  // dev 1 is free: would overfill it
  EXPECT_THROW(node.release(wrong_device), std::logic_error);
  EXPECT_EQ(node.available(), before);
  EXPECT_EQ(device_free(node), (std::vector<FixedPoint>{FixedPoint(), fp(1)}));
}

TEST(NodeResourcesTest, RandomAllocateReleaseKeepsTheBooksBalanced) {
  const std::vector<double> cpus = {0, 0.5, 1, 2, 3};
  const std::vector<double> gpus = {0, 0, 0.1, 0.25, 0.3, 0.5, 0.7, 1, 2, 3};
  const std::vector<double> memory = {0, 1 << 20, 1 << 28};
  const std::vector<double> tpus = {0, 0, 0, 1};
  for (int devices : {0, 1, 3, 4}) {
    for (unsigned seed = 1; seed <= 20; ++seed) {
      SCOPED_TRACE(::testing::Message() << "devices " << devices << " seed " << seed);
      std::mt19937 rng(seed);
      const ResourceSet total =
          rs({{kCpu, 8}, {kGpu, static_cast<double>(devices)}, {kMemory, 1 << 30}, {"TPU", 2}});
      NodeResources node(total, devices);
      std::vector<Allocation> live;
      int granted = 0, refused = 0;
      for (int step = 0; step < 500; ++step) {
        if (!live.empty() && rng() % 3 == 0) {
          size_t i = rng() % live.size();
          node.release(live[i]);
          live.erase(live.begin() + i);
        } else {
          const ResourceSet request = rs({{kCpu, cpus[rng() % cpus.size()]},
                                          {kGpu, gpus[rng() % gpus.size()]},
                                          {kMemory, memory[rng() % memory.size()]},
                                          {"TPU", tpus[rng() % tpus.size()]}});
          const ResourceSet available_before = node.available();
          const auto devices_before = device_free(node);
          // The oracle: granted exactly when the quantities are free and some device
          // placement exists for the GPU part.
          const FixedPoint gpu = request.get(kGpu);
          bool gpu_fits = gpu == FixedPoint();
          if (gpu.is_whole() && gpu > FixedPoint()) {
            int whole_free = 0;
            for (FixedPoint f : devices_before) whole_free += f == fp(1);
            gpu_fits = whole_free >= gpu.raw() / kResourceUnit;
          } else if (gpu < fp(1)) {
            for (FixedPoint f : devices_before) gpu_fits = gpu_fits || f >= gpu;
          }
          auto a = node.allocate(request);
          ASSERT_EQ(a.has_value(), available_before.contains(request) && gpu_fits) << request;
          if (a) {
            ++granted;
            ASSERT_EQ(a->resources, request);
            ASSERT_TRUE(available_before.contains(request));
            live.push_back(*a);
          } else {
            ++refused;
            ASSERT_EQ(node.available(), available_before);
            ASSERT_EQ(device_free(node), devices_before);
          }
        }
        // What is free plus what is held is exactly the total, and never more than it.
        ResourceSet held;
        std::vector<FixedPoint> held_per_device(devices);
        for (const Allocation& a : live) {
          held += a.resources;
          FixedPoint shares;
          for (const GpuShare& s : a.gpus) {
            held_per_device[s.device] += s.amount;
            shares += s.amount;
          }
          ASSERT_EQ(shares, a.resources.get(kGpu));
        }
        ResourceSet accounted = node.available();
        accounted += held;
        ASSERT_EQ(accounted, total);
        ASSERT_TRUE(total.contains(node.available()));
        FixedPoint device_sum;
        for (int d = 0; d < devices; ++d) {
          const FixedPoint free = node.gpus().available(d);
          ASSERT_GE(free, FixedPoint());
          ASSERT_EQ(free + held_per_device[d], fp(1)) << "device " << d;
          device_sum += free;
        }
        ASSERT_EQ(device_sum, node.available().get(kGpu));
      }
      EXPECT_GT(granted, 0);
      EXPECT_GT(refused, 0);
      for (const Allocation& a : live) node.release(a);
      EXPECT_EQ(node.available(), total);
      EXPECT_EQ(device_free(node), std::vector<FixedPoint>(devices, fp(1)));
    }
  }
}

}  // namespace
}  // namespace gantry::internal

namespace gantry::internal {
namespace {

TEST(NodeResourcesForceAcquire, OversubscribesThenRepaysFromReleases) {
  NodeResources node(ResourceSet::from_doubles({{"CPU", 2}}), 0);
  auto a = node.allocate(ResourceSet::from_doubles({{"CPU", 1}}));
  ASSERT_TRUE(a);
  // The task on `a` blocks: its CPU is lent back and taken by another task.
  node.release(*a);
  auto b = node.allocate(ResourceSet::from_doubles({{"CPU", 2}}));
  ASSERT_TRUE(b);
  // The blocked task wakes: it takes its CPU back though none is free.
  node.force_acquire(ResourceSet::from_doubles({{"CPU", 1}}));
  EXPECT_EQ(node.debt().get(kCpu), FixedPoint::from_double(1));
  EXPECT_EQ(node.available().get(kCpu), FixedPoint());
  // The other task's release repays the debt before anything is free again.
  node.release(*b);
  EXPECT_EQ(node.debt().get(kCpu), FixedPoint());
  EXPECT_EQ(node.available().get(kCpu), FixedPoint::from_double(1));
  node.release(*a);
  EXPECT_EQ(node.available().get(kCpu), FixedPoint::from_double(2));
  EXPECT_THROW(node.force_acquire(ResourceSet::from_doubles({{"GPU", 1}})), std::logic_error);
}

}  // namespace
}  // namespace gantry::internal
