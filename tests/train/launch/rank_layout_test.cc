// Rank assignment by node and torchrun's environment contract, from hand-made placements.

#include "rank_layout.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace gantry::train::launch {
namespace {

TEST(RankLayoutTest, OneNodeTakesRanksInWorkerOrder) {
  RankLayout layout = assign_ranks({{"A", ""}, {"A", ""}, {"A", ""}});
  EXPECT_EQ(layout.world_size, 3);
  EXPECT_EQ(layout.num_nodes, 1);
  for (int i = 0; i < 3; ++i) {
    const RankAssignment& a = layout.workers[static_cast<size_t>(i)];
    EXPECT_EQ(a.rank, i);
    EXPECT_EQ(a.local_rank, i);
    EXPECT_EQ(a.local_world_size, 3);
    EXPECT_EQ(a.node_rank, 0);
  }
  EXPECT_EQ(layout.worker_of_rank, (std::vector<int>{0, 1, 2}));
}

TEST(RankLayoutTest, RanksAreContiguousPerNodeAndRankZerosNodeIsNodeZero) {
  // Workers as a SPREAD group lands them: alternating nodes, B first after A.
  RankLayout layout = assign_ranks({{"A", ""}, {"B", ""}, {"A", ""}, {"C", ""}, {"B", ""}});
  EXPECT_EQ(layout.world_size, 5);
  EXPECT_EQ(layout.num_nodes, 3);
  // A holds ranks 0-1, B 2-3, C 4.
  EXPECT_EQ(layout.worker_of_rank, (std::vector<int>{0, 2, 1, 4, 3}));
  auto at = [&](int worker) { return layout.workers[static_cast<size_t>(worker)]; };
  EXPECT_EQ(at(0).rank, 0);
  EXPECT_EQ(at(0).node_rank, 0);
  EXPECT_EQ(at(2).rank, 1);
  EXPECT_EQ(at(2).local_rank, 1);
  EXPECT_EQ(at(1).rank, 2);
  EXPECT_EQ(at(1).node_rank, 1);
  EXPECT_EQ(at(1).local_rank, 0);
  EXPECT_EQ(at(4).local_rank, 1);
  EXPECT_EQ(at(3).rank, 4);
  EXPECT_EQ(at(3).node_rank, 2);
  EXPECT_EQ(at(3).local_world_size, 1);
  EXPECT_EQ(at(0).local_world_size, 2);
  // Every rank once.
  std::vector<int> ranks;
  for (const RankAssignment& a : layout.workers) ranks.push_back(a.rank);
  std::sort(ranks.begin(), ranks.end());
  EXPECT_EQ(ranks, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(RankLayoutTest, EachNodeSeesItsWorkersDevicesInLocalRankOrder) {
  RankLayout layout = assign_ranks({{"A", "3"}, {"B", "0"}, {"A", "1"}, {"B", "1"}});
  EXPECT_EQ(layout.workers[0].cuda_visible_devices, "3,1");  // local rank 0's device is device 0
  EXPECT_EQ(layout.workers[2].cuda_visible_devices, "3,1");
  EXPECT_EQ(layout.workers[1].cuda_visible_devices, "0,1");
  EXPECT_EQ(layout.workers[3].cuda_visible_devices, "0,1");
  // Workers with two devices each, and a shared one listed once.
  RankLayout two = assign_ranks({{"A", "0,1"}, {"A", "2,3"}, {"A", "3"}});
  EXPECT_EQ(two.workers[1].cuda_visible_devices, "0,1,2,3");
  EXPECT_EQ(assign_ranks({{"A", ""}, {"A", ""}}).workers[0].cuda_visible_devices, "");
}

TEST(RankLayoutTest, NoWorkersNoRanks) {
  RankLayout layout = assign_ranks({});
  EXPECT_EQ(layout.world_size, 0);
  EXPECT_EQ(layout.num_nodes, 0);
  EXPECT_TRUE(layout.worker_of_rank.empty());
}

TEST(RankLayoutTest, TheLauncherSetsTorchrunsContract) {
  RankLayout layout = assign_ranks({{"A", "0"}, {"B", "0"}, {"A", "1"}});
  Rendezvous r{.master_addr = "10.0.0.5",
               .master_port = 29501,
               .restart_count = 2,
               .max_restarts = 3,
               .run_id = "mlp",
               .threads_per_worker = 4,
               .uses_gpus = true};
  auto env = launcher_environment(layout.workers[2], layout, r, {});
  EXPECT_EQ(env["RANK"], "1");
  EXPECT_EQ(env["LOCAL_RANK"], "1");
  EXPECT_EQ(env["WORLD_SIZE"], "3");
  EXPECT_EQ(env["LOCAL_WORLD_SIZE"], "2");
  EXPECT_EQ(env["NODE_RANK"], "0");
  EXPECT_EQ(env["GROUP_RANK"], "0");
  EXPECT_EQ(env["GROUP_WORLD_SIZE"], "2");
  EXPECT_EQ(env["ROLE_RANK"], "1");
  EXPECT_EQ(env["ROLE_WORLD_SIZE"], "3");
  EXPECT_EQ(env["MASTER_ADDR"], "10.0.0.5");
  EXPECT_EQ(env["MASTER_PORT"], "29501");
  EXPECT_EQ(env["TORCHELASTIC_RESTART_COUNT"], "2");
  EXPECT_EQ(env["TORCHELASTIC_MAX_RESTARTS"], "3");
  EXPECT_EQ(env["TORCHELASTIC_RUN_ID"], "mlp");
  EXPECT_EQ(env["OMP_NUM_THREADS"], "4");
  EXPECT_EQ(env["OPENBLAS_NUM_THREADS"], "4");
  EXPECT_EQ(env["CUDA_VISIBLE_DEVICES"], "0,1");
  auto b = launcher_environment(layout.workers[1], layout, r, {});
  EXPECT_EQ(b["RANK"], "2");
  EXPECT_EQ(b["NODE_RANK"], "1");
  EXPECT_EQ(b["LOCAL_RANK"], "0");
  EXPECT_EQ(b["LOCAL_WORLD_SIZE"], "1");
}

TEST(RankLayoutTest, UserVariablesMayChangeThreadsButNotTheContract) {
  RankLayout layout = assign_ranks({{"A", ""}});
  Rendezvous r{.master_addr = "127.0.0.1", .master_port = 1234, .run_id = "x"};
  auto env =
      launcher_environment(layout.workers[0], layout, r, {{"OMP_NUM_THREADS", "8"}, {"RANK", "7"}, {"MY_FLAG", "on"}});
  EXPECT_EQ(env["OMP_NUM_THREADS"], "8");
  EXPECT_EQ(env["OPENBLAS_NUM_THREADS"], "1");
  EXPECT_EQ(env["RANK"], "0");
  EXPECT_EQ(env["MY_FLAG"], "on");
  EXPECT_EQ(env.count("CUDA_VISIBLE_DEVICES"), 0u);  // CPU workers keep their worker's (empty) setting
}

TEST(RankLayoutTest, TheProgramLosesGantrysVariablesAndGetsTheLaunchers) {
  std::vector<std::string> env = program_environment(
      {{"PATH", "/usr/bin"}, {"GANTRY_WORKER", "1"}, {"GANTRY_TOKEN", "secret"}, {"RANK", "9"}, {"HOME", "/h"}},
      {{"RANK", "0"}, {"MASTER_PORT", "1"}});
  EXPECT_EQ(env, (std::vector<std::string>{"HOME=/h", "MASTER_PORT=1", "PATH=/usr/bin", "RANK=0"}));
}

}  // namespace
}  // namespace gantry::train::launch
