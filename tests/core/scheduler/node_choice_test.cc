#include "scheduler/node_choice.h"

#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <vector>

namespace gantry::internal {
namespace {

ResourceSet cpus(double n, double gpus = 0) { return ResourceSet::from_doubles({{kCpu, n}, {kGpu, gpus}}); }

// Three nodes in joining order: 4 CPUs, 2 CPUs + 2 GPUs, 8 CPUs; all idle unless changed.
class NodeChoiceTest : public ::testing::Test {
 protected:
  NodeChoiceTest() {
    shapes_.push_back(std::make_unique<NodeResources>(cpus(4), 0));
    shapes_.push_back(std::make_unique<NodeResources>(cpus(2, 2), 2));
    shapes_.push_back(std::make_unique<NodeResources>(cpus(8), 0));
    for (auto& shape : shapes_) nodes_.push_back({UniqueId::generate(), shape.get(), shape->total(), true});
  }
  NodeChoice choose(const ResourceSet& request, const Placement& placement, int local) {
    return choose_node(nodes_, request, placement, local, &cursor_);
  }

  std::vector<std::unique_ptr<NodeResources>> shapes_;
  std::vector<NodeCandidate> nodes_;
  uint64_t cursor_ = 0;
};

TEST_F(NodeChoiceTest, DefaultStaysLocalWhileItHasRoom) {
  EXPECT_EQ(choose(cpus(1), {}, 2).index, 2);
  EXPECT_EQ(choose(cpus(4), {}, 0).index, 0);
}

TEST_F(NodeChoiceTest, DefaultSpillsToTheFirstNodeWithRoom) {
  nodes_[0].available = cpus(0.5);
  EXPECT_EQ(choose(cpus(1), {}, 0).index, 1);
  nodes_[1].available = cpus(0);
  EXPECT_EQ(choose(cpus(1), {}, 0).index, 2);
}

TEST_F(NodeChoiceTest, DefaultQueuesLocallyWhenNoneHasRoomButLocalCanEverHoldIt) {
  for (auto& n : nodes_) n.available = cpus(0);
  EXPECT_EQ(choose(cpus(3), {}, 0).index, 0);
  // Local can never hold 6 CPUs: the first node that can, even without room now.
  EXPECT_EQ(choose(cpus(6), {}, 0).index, 2);
}

TEST_F(NodeChoiceTest, DefaultSendsWhatOnlyAnotherNodeCanHoldThere) {
  EXPECT_EQ(choose(cpus(1, 1), {}, 0).index, 1);
  EXPECT_EQ(choose(cpus(1, 1), {}, -1).index, 1);  // the head has no local node
}

TEST_F(NodeChoiceTest, InfeasibleNamesTheObstacle) {
  NodeChoice c = choose(cpus(1, 3), {}, 0);
  EXPECT_EQ(c.index, -1);
  EXPECT_NE(c.why.find("GPU"), std::string::npos) << c.why;
  EXPECT_EQ(choose_node({}, cpus(1), {}, -1, &cursor_).index, -1);
}

TEST_F(NodeChoiceTest, DeadNodesAreNeverChosen) {
  nodes_[1].alive = false;
  EXPECT_EQ(choose(cpus(1, 1), {}, 0).index, -1);
  nodes_[0].available = cpus(0);
  EXPECT_EQ(choose(cpus(1), {}, 0).index, 2);
}

TEST_F(NodeChoiceTest, SpreadTakesNodesInTurn) {
  Placement spread{Placement::Kind::kSpread};
  std::vector<int> picks;
  for (int i = 0; i < 6; ++i) picks.push_back(choose(cpus(1), spread, 0).index);
  EXPECT_EQ(picks, (std::vector<int>{0, 1, 2, 0, 1, 2}));
  // Only nodes with room while any has it; all able ones when none has.
  nodes_[1].available = cpus(0);
  for (int i = 0; i < 4; ++i) EXPECT_NE(choose(cpus(1), spread, 0).index, 1);
  for (auto& n : nodes_) n.available = cpus(0);
  std::set<int> seen;
  for (int i = 0; i < 3; ++i) seen.insert(choose(cpus(1), spread, 0).index);
  EXPECT_EQ(seen.size(), 3u);
}

TEST_F(NodeChoiceTest, NodeAffinityHardAndSoft) {
  Placement hard{Placement::Kind::kNodeAffinity, nodes_[2].id, false};
  EXPECT_EQ(choose(cpus(1), hard, 0).index, 2);
  nodes_[2].available = cpus(0);
  EXPECT_EQ(choose(cpus(1), hard, 0).index, 2) << "hard affinity waits for its node";
  nodes_[2].alive = false;
  NodeChoice dead = choose(cpus(1), hard, 0);
  EXPECT_EQ(dead.index, -1);
  EXPECT_NE(dead.why.find("is dead"), std::string::npos) << dead.why;
  Placement soft = hard;
  soft.soft = true;
  EXPECT_EQ(choose(cpus(1), soft, 0).index, 0);
  Placement unknown{Placement::Kind::kNodeAffinity, UniqueId::generate(), false};
  EXPECT_NE(choose(cpus(1), unknown, 0).why.find("not in the cluster"), std::string::npos);
  Placement too_small{Placement::Kind::kNodeAffinity, nodes_[0].id, false};
  NodeChoice c = choose(cpus(1, 1), too_small, 0);
  EXPECT_EQ(c.index, -1);
  EXPECT_NE(c.why.find("cannot hold it"), std::string::npos) << c.why;
}

}  // namespace
}  // namespace gantry::internal
