// The hierarchical backend with its ranks as threads of one process, told they sit on
// different "nodes" (shared memory among the threads of one node, Gloo on loopback among
// the node leaders), checked element by element against serial reductions.

#include <gtest/gtest.h>

#include <functional>
#include <thread>

#include "collective/backend.h"
#include "collective/fake_store.h"
#include "collective/reduce_kernels.h"

namespace col = gantry::collective;
using namespace gantry::collective::detail;
using namespace std::chrono_literals;

namespace {

double value(int rank, size_t i) { return static_cast<double>((rank * 5 + i * 3) % 9 + 1); }

// Runs `body(rank, backend)` on one thread per rank of a group laid out on `nodes`.
void run_group(const std::vector<std::string>& nodes, const std::function<void(int, Backend&)>& body) {
  const int world = static_cast<int>(nodes.size());
  auto store = std::make_shared<FakeStore>();
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      BackendContext c;
      c.group = "h";
      c.rank = r;
      c.world_size = world;
      c.store = store;
      c.op_timeout = 30s;
      c.node_ids = nodes;
      c.node_ips.assign(nodes.size(), "127.0.0.1");
      try {
        auto backend = make_hierarchical_backend(c);
        EXPECT_EQ(backend->kind(), col::BackendKind::kHierarchical);
        body(r, *backend);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
  for (auto& t : threads) t.join();
}

class Layout : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(Layout, AllreduceEveryOpMatchesSerialReduction) {
  const auto nodes = GetParam();
  const int world = static_cast<int>(nodes.size());
  for (size_t n : {size_t{0}, size_t{1}, size_t{1001}, size_t{300000}}) {
    run_group(nodes, [&](int rank, Backend& b) {
      for (col::ReduceOp op : {col::ReduceOp::kSum, col::ReduceOp::kAvg, col::ReduceOp::kMin, col::ReduceOp::kMax,
                               col::ReduceOp::kProduct}) {
        std::vector<double> d(n);
        for (size_t i = 0; i < n; ++i) d[i] = value(rank, i);
        b.allreduce(d.data(), n, col::DataType::kFloat64, op);
        std::vector<int64_t> ints(n);
        for (size_t i = 0; i < n; ++i) ints[i] = static_cast<int64_t>(value(rank, i));
        b.allreduce(ints.data(), n, col::DataType::kInt64, op);
        for (size_t i = 0; i < n; ++i) {
          double want = value(0, i);
          int64_t want_int = static_cast<int64_t>(value(0, i));
          for (int r = 1; r < world; ++r) {
            double v = value(r, i);
            switch (op) {
              case col::ReduceOp::kSum: case col::ReduceOp::kAvg: want += v; want_int += static_cast<int64_t>(v); break;
              case col::ReduceOp::kProduct: want *= v; want_int *= static_cast<int64_t>(v); break;
              case col::ReduceOp::kMin: want = std::min(want, v); want_int = std::min(want_int, static_cast<int64_t>(v)); break;
              case col::ReduceOp::kMax: want = std::max(want, v); want_int = std::max(want_int, static_cast<int64_t>(v)); break;
            }
          }
          if (op == col::ReduceOp::kAvg) {
            want /= world;
            want_int /= world;
          }
          ASSERT_DOUBLE_EQ(d[i], want) << col::to_string(op) << " n=" << n << " rank " << rank << " at " << i;
          ASSERT_EQ(ints[i], want_int) << col::to_string(op) << " n=" << n << " rank " << rank << " at " << i;
        }
      }
    });
  }
}

TEST_P(Layout, BroadcastReduceBarrierAllgatherReduceScatterAndSendRecv) {
  const auto nodes = GetParam();
  const int world = static_cast<int>(nodes.size());
  const size_t n = 777;
  run_group(nodes, [&](int rank, Backend& b) {
    for (int root = 0; root < world; ++root) {
      std::vector<float> d(n);
      for (size_t i = 0; i < n; ++i) d[i] = static_cast<float>(value(rank, i));
      b.broadcast(d.data(), n, col::DataType::kFloat32, root);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(d[i], static_cast<float>(value(root, i))) << "broadcast from " << root;
      for (size_t i = 0; i < n; ++i) d[i] = static_cast<float>(value(rank, i));
      b.reduce(d.data(), n, col::DataType::kFloat32, col::ReduceOp::kSum, root);
      for (size_t i = 0; i < n; ++i) {
        float want = 0;
        for (int r = 0; r < world; ++r) want += static_cast<float>(value(r, i));
        ASSERT_EQ(d[i], rank == root ? want : static_cast<float>(value(rank, i))) << "reduce to " << root;
      }
      b.barrier();
    }
    std::vector<int32_t> mine(n), all(n * static_cast<size_t>(world));
    for (size_t i = 0; i < n; ++i) mine[i] = static_cast<int32_t>(value(rank, i));
    b.allgather(mine.data(), all.data(), n, col::DataType::kInt32);
    for (int r = 0; r < world; ++r)
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(all[static_cast<size_t>(r) * n + i], static_cast<int32_t>(value(r, i)));
    std::vector<int32_t> send(n * static_cast<size_t>(world)), part(n);
    for (size_t i = 0; i < send.size(); ++i) send[i] = static_cast<int32_t>(value(rank, i));
    b.reduce_scatter(send.data(), part.data(), n, col::DataType::kInt32, col::ReduceOp::kMax);
    for (size_t i = 0; i < n; ++i) {
      int32_t want = 0;
      for (int r = 0; r < world; ++r) want = std::max(want, static_cast<int32_t>(value(r, static_cast<size_t>(rank) * n + i)));
      ASSERT_EQ(part[i], want);
    }
    std::vector<int32_t> got(n);
    int next = (rank + 1) % world, prev = (rank + world - 1) % world;
    if (rank % 2 == 0) {
      b.send(mine.data(), n, col::DataType::kInt32, next);
      b.recv(got.data(), n, col::DataType::kInt32, prev);
    } else {
      b.recv(got.data(), n, col::DataType::kInt32, prev);
      b.send(mine.data(), n, col::DataType::kInt32, next);
    }
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], static_cast<int32_t>(value(prev, i)));
  });
}

INSTANTIATE_TEST_SUITE_P(Nodes, Layout,
                         ::testing::Values(std::vector<std::string>{"a", "a", "b", "b"},
                                           std::vector<std::string>{"a", "b", "a", "b"},
                                           std::vector<std::string>{"a", "a", "a", "b"},
                                           std::vector<std::string>{"a", "b", "b"}));

TEST(Hierarchical, AbortFailsEveryLevel) {
  run_group({"a", "a", "b", "b"}, [](int rank, Backend& b) {
    std::vector<float> d(10, 1.0f);
    b.allreduce(d.data(), d.size(), col::DataType::kFloat32, col::ReduceOp::kSum);
    EXPECT_EQ(d[0], 4.0f);
    b.barrier();
    if (rank == 3) b.abort("stop here");
    // Every rank fails: rank 3 at once, the others as the abort reaches their level.
    bool failed = false;
    try {
      b.barrier();
      b.allreduce(d.data(), d.size(), col::DataType::kFloat32, col::ReduceOp::kSum);
    } catch (const col::CollectiveError& e) {
      failed = true;
      if (rank == 3) EXPECT_NE(std::string(e.what()).find("stop here"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(failed) << "rank " << rank << " ran on after the abort";
  });
}

}  // namespace
