#include "scheduler/bundles.h"

#include <gtest/gtest.h>

namespace gantry::internal {
namespace {

ResourceSet rs(const std::map<std::string, double>& m) { return ResourceSet::from_doubles(m); }

NodeResources node(double cpus, int gpus = 0) {
  std::map<std::string, double> total{{kCpu, cpus}};
  if (gpus > 0) total[kGpu] = gpus;
  return NodeResources(rs(total), gpus);
}

TEST(BundleLedger, LeasesAllocateFromTheBundleWithTheNodesDeviceIds) {
  NodeResources n = node(4, 4);
  ASSERT_TRUE(n.allocate(rs({{kGpu, 1}})));  // device 0 taken by someone else
  auto reserved = n.allocate(rs({{kCpu, 2}, {kGpu, 2}}));
  ASSERT_TRUE(reserved);
  BundleLedger ledger(*reserved);
  auto a = ledger.allocate(rs({{kCpu, 1}, {kGpu, 1}}));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->gpu_ids(), std::vector<int>{1});
  auto b = ledger.allocate(rs({{kCpu, 1}, {kGpu, 1}}));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->gpu_ids(), std::vector<int>{2});
  EXPECT_FALSE(ledger.allocate(rs({{kCpu, 1}})));  // the bundle's 2 CPUs are in use
  ledger.release(*a);
  EXPECT_TRUE(ledger.allocate(rs({{kGpu, 0.5}})));
  EXPECT_THROW(ledger.release(Allocation{rs({{kGpu, 1}}), {{3, FixedPoint::whole(1)}}}), std::logic_error);
}

TEST(BundleLedger, AFractionalBundleIsAPartDevice) {
  NodeResources n = node(2, 1);
  auto reserved = n.allocate(rs({{kGpu, 0.5}}));
  ASSERT_TRUE(reserved);
  BundleLedger ledger(*reserved);
  EXPECT_EQ(ledger.infeasible_reason(rs({{kGpu, 1}})), "asks for GPU: 1 but the bundle holds GPU: 0.5");
  EXPECT_EQ(ledger.infeasible_reason(rs({{kCpu, 1}})), "asks for CPU: 1 but the bundle holds no CPU");
  EXPECT_EQ(ledger.infeasible_reason(rs({{kGpu, 0.25}})), "");
  auto a = ledger.allocate(rs({{kGpu, 0.25}}));
  auto b = ledger.allocate(rs({{kGpu, 0.25}}));
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(ledger.allocate(rs({{kGpu, 0.25}})));
  ledger.release(*a);
  EXPECT_THROW({ ledger.release(*b); ledger.release(*b); }, std::logic_error);
}

std::vector<ResourceSet> cpus(std::initializer_list<double> each) {
  std::vector<ResourceSet> out;
  for (double c : each) out.push_back(rs({{kCpu, c}}));
  return out;
}

TEST(PlanBundles, PackFillsOneNodeFirstThenTheNext) {
  auto plan = plan_bundles({node(2), node(2), node(2)}, cpus({1, 1, 1}), BundleStrategy::kPack);
  ASSERT_TRUE(plan);
  EXPECT_EQ(*plan, (std::vector<int>{0, 0, 1}));
}

TEST(PlanBundles, SpreadUsesEveryNodeBeforeSharing) {
  auto plan = plan_bundles({node(4), node(4)}, cpus({1, 1, 1}), BundleStrategy::kSpread);
  ASSERT_TRUE(plan);
  EXPECT_EQ(*plan, (std::vector<int>{0, 1, 0}));
}

TEST(PlanBundles, StrictPackNeedsOneNodeForAll) {
  EXPECT_FALSE(plan_bundles({node(2), node(2)}, cpus({1, 1, 1}), BundleStrategy::kStrictPack));
  auto plan = plan_bundles({node(2), node(3)}, cpus({1, 1, 1}), BundleStrategy::kStrictPack);
  ASSERT_TRUE(plan);
  EXPECT_EQ(*plan, (std::vector<int>{1, 1, 1}));
}

TEST(PlanBundles, StrictSpreadNeedsDistinctNodesAndBacktracks) {
  EXPECT_FALSE(plan_bundles({node(8), node(8)}, cpus({1, 1, 1}), BundleStrategy::kStrictSpread));
  // Greedy would give bundle 0 (1 CPU) node 0 (2 CPUs) and leave bundle 1 (2 CPUs) the
  // 1-CPU node; the search must put bundle 0 elsewhere.
  auto plan = plan_bundles({node(2), node(1)}, cpus({1, 2}), BundleStrategy::kStrictSpread);
  ASSERT_TRUE(plan);
  EXPECT_EQ(*plan, (std::vector<int>{1, 0}));
}

TEST(PlanBundles, FixedBundlesStayAndCountForTheStrategy) {
  // Bundle 0 sits on node 1 already; STRICT_SPREAD keeps the others off it.
  NodeResources n1 = node(2);
  ASSERT_TRUE(n1.allocate(rs({{kCpu, 1}})));
  auto plan = plan_bundles({node(2), n1, node(2)}, cpus({1, 1, 1}), BundleStrategy::kStrictSpread, {1, -1, -1});
  ASSERT_TRUE(plan);
  EXPECT_EQ(*plan, (std::vector<int>{1, 0, 2}));
  // STRICT_PACK follows the fixed bundle to its node, which has room for one more only.
  EXPECT_FALSE(plan_bundles({node(2), n1}, cpus({1, 1, 1}), BundleStrategy::kStrictPack, {1, -1, -1}));
}

TEST(PlanBundles, GpuDevicesAreCountedPerDevice) {
  // Three 0.6-GPU bundles need three devices even though 1.8 < 2.
  EXPECT_FALSE(plan_bundles({node(8, 2)}, {rs({{kGpu, 0.6}}), rs({{kGpu, 0.6}}), rs({{kGpu, 0.6}})},
                            BundleStrategy::kPack));
  EXPECT_TRUE(plan_bundles({node(8, 2)}, {rs({{kGpu, 0.5}}), rs({{kGpu, 0.5}}), rs({{kGpu, 1}})},
                           BundleStrategy::kStrictPack));
}

TEST(PlanBundles, InfeasibleReasonsNameTheObstacle) {
  std::vector<NodeResources> two{node(2, 1), node(2, 1)};
  EXPECT_EQ(bundles_infeasible_reason(two, {rs({{kGpu, 2}})}, BundleStrategy::kPack),
            "bundle 0 {GPU: 2} fits on no node: it asks for GPU: 2 but the node has GPU: 1 (and so on for every node)");
  EXPECT_EQ(bundles_infeasible_reason(two, cpus({1, 1, 1}), BundleStrategy::kStrictSpread),
            "STRICT_SPREAD needs its own node for each of its 3 bundles but the cluster has 2 live node(s)");
  EXPECT_EQ(bundles_infeasible_reason(two, cpus({2, 1}), BundleStrategy::kStrictPack),
            "STRICT_PACK needs one node holding all its bundles, {CPU: 3} together, and no node does");
  EXPECT_EQ(bundles_infeasible_reason(two, cpus({2, 2}), BundleStrategy::kSpread), "");
  EXPECT_EQ(bundles_infeasible_reason({}, cpus({1}), BundleStrategy::kPack), "the cluster has no live node");
}

TEST(PlanBundles, GivesUpWithinTheBudget) {
  // 12 bundles of 2 CPUs cannot STRICT_SPREAD over 11 nodes of 1 CPU; the search must stop.
  std::vector<NodeResources> many(11, node(1));
  std::vector<ResourceSet> bundles(12, rs({{kCpu, 2}}));
  EXPECT_FALSE(plan_bundles(many, bundles, BundleStrategy::kPack, {}, 1000));
}

}  // namespace
}  // namespace gantry::internal
