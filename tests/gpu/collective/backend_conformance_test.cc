// What every host backend must do alike: each op, element type, reduction and size at world
// sizes 1 to 4, against a serial reduction done here. One suite over (backend, world size);
// the ranks are threads of this process meeting through a FakeStore. What sets a backend
// apart (its failures, handshakes, a peer's death) is tested in its own *_backend_test.cc.

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <iterator>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "backend_test_support.h"
#include "collective/backend.h"

namespace {

namespace col = gantry::collective;
using namespace gantry::collective::testing;

/// One instance of the suite: a backend and a world size.
struct Conformance {
  const char* backend;
  BackendFactory factory;
  int world;
};

void PrintTo(const Conformance& c, std::ostream* os) { *os << c.backend << " world " << c.world; }

std::vector<Conformance> every_backend_and_world_size() {
  const std::pair<const char*, BackendFactory> backends[] = {{"gloo", col::detail::make_gloo_backend},
                                                             {"tcp", col::detail::make_tcp_backend},
                                                             {"shm", col::detail::make_shm_backend}};
  std::vector<Conformance> out;
  for (const auto& [name, factory] : backends)
    for (int world = 1; world <= 4; ++world) out.push_back({name, factory, world});
  return out;
}

// Calls check(type, op, count) for every element type, reduction and count of kCounts.
void for_every_type_op_and_count(const std::function<void(DataType, ReduceOp, size_t)>& check) {
  for (DataType type : kAllTypes)
    for (ReduceOp op : kAllOps)
      for (size_t count : kCounts) check(type, op, count);
}

class BackendConformance : public ::testing::TestWithParam<Conformance> {
 protected:
  int world() const { return GetParam().world; }
  Group make(const std::string& name) { return make_group(GetParam().factory, name, world()); }
};

TEST_P(BackendConformance, AllreduceMatchesSerialReduction) {
  const int world = this->world();
  Group group = make("allreduce");
  on_every_rank(group, [&](int rank, Backend& backend) {
    for_every_type_op_and_count([&](DataType type, ReduceOp op, size_t count) {
      Bytes data = make_input(rank, count, type);
      backend.allreduce(data.data(), count, type, op);
      expect_elements(data, expected_reduction(count, type, op, world), type,
                      describe("allreduce", type, op, count, rank, world));
    });
  });
}

TEST_P(BackendConformance, ReduceGivesRootTheResultAndLeavesOthersAlone) {
  const int world = this->world();
  Group group = make("reduce");
  on_every_rank(group, [&](int rank, Backend& backend) {
    for_every_type_op_and_count([&](DataType type, ReduceOp op, size_t count) {
      const int root = static_cast<int>((count + static_cast<size_t>(op)) % world);
      Bytes data = make_input(rank, count, type);
      backend.reduce(data.data(), count, type, op, root);
      expect_elements(data, rank == root ? expected_reduction(count, type, op, world) : make_input(rank, count, type),
                      type, describe("reduce", type, op, count, rank, world) + " root " + std::to_string(root));
    });
  });
}

TEST_P(BackendConformance, ReduceScatterGivesRankRItsReducedBlock) {
  const int world = this->world();
  Group group = make("reduce_scatter");
  on_every_rank(group, [&](int rank, Backend& backend) {
    for_every_type_op_and_count([&](DataType type, ReduceOp op, size_t count) {
      Bytes send = make_input(rank, world * count, type);
      const Bytes original = send;
      Bytes recv(count * col::element_size(type), 0xab);
      backend.reduce_scatter(send.data(), recv.data(), count, type, op);
      const std::string what = describe("reduce_scatter", type, op, count, rank, world);
      expect_elements(recv, expected_reduction(count, type, op, world, rank * count), type, what);
      EXPECT_EQ(send, original) << what << ": the input changed";
    });
  });
}

TEST_P(BackendConformance, BroadcastCopiesRootToEveryRank) {
  const int world = this->world();
  Group group = make("broadcast");
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (DataType type : kAllTypes) {
      for (size_t count : kCounts) {
        for (int root = 0; root < world; ++root) {
          Bytes data = make_input(rank, count, type);
          backend.broadcast(data.data(), count, type, root);
          expect_elements(data, make_input(root, count, type), type,
                          describe("broadcast", type, {}, count, rank, world) + " root " + std::to_string(root));
        }
      }
    }
  });
}

TEST_P(BackendConformance, AllgatherPutsBlocksInRankOrder) {
  const int world = this->world();
  Group group = make("allgather");
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (DataType type : kAllTypes) {
      for (size_t count : kCounts) {
        Bytes send = make_input(rank, count, type);
        Bytes recv(world * count * col::element_size(type), 0xab);
        backend.allgather(send.data(), recv.data(), count, type);
        expect_elements(recv, gathered_inputs(world, count, type), type,
                        describe("allgather", type, {}, count, rank, world));
      }
    }
    // In place: the send block is this rank's block of recv.
    const size_t count = 1001;
    const size_t bytes = count * sizeof(float);
    Bytes recv(world * bytes, 0xab);
    Bytes mine = make_input(rank, count, DataType::kFloat32);
    std::memcpy(recv.data() + rank * bytes, mine.data(), bytes);
    backend.allgather(recv.data() + rank * bytes, recv.data(), count, DataType::kFloat32);
    expect_elements(recv, gathered_inputs(world, count, DataType::kFloat32), DataType::kFloat32,
                    describe("in-place allgather", DataType::kFloat32, {}, count, rank, world));
  });
}

TEST_P(BackendConformance, BarrierHoldsEveryRankUntilAllArrive) {
  const int world = this->world();
  Group group = make("barrier");
  std::atomic<int> arrivals{0};
  on_every_rank(group, [&](int rank, Backend& backend) {
    for (int round = 1; round <= 20; ++round) {
      if ((round + rank) % 3 == 0) std::this_thread::sleep_for(2ms);  // stragglers
      arrivals.fetch_add(1);
      backend.barrier();
      EXPECT_GE(arrivals.load(), world * round) << "rank " << rank << " left barrier " << round << " early";
    }
  });
}

TEST_P(BackendConformance, SendRecvMatchInOrderBetweenEveryPair) {
  const int world = this->world();
  if (world == 1) GTEST_SKIP() << "no peer to send to";
  Group group = make("p2p");
  struct Message {
    DataType type;
    size_t count;
  };
  const Message messages[] = {
      {DataType::kFloat32, 1001}, {DataType::kInt64, 1}, {DataType::kUInt8, 0}, {DataType::kBFloat16, 37}};
  on_every_rank(group, [&](int rank, Backend& backend) {
    // Every ordered pair in turn, the same schedule on every rank; several messages each.
    for (int from = 0; from < world; ++from) {
      for (int to = 0; to < world; ++to) {
        if (from == to || (rank != from && rank != to)) continue;
        for (size_t m = 0; m < std::size(messages); ++m) {
          const auto [type, count] = messages[m];
          const size_t first = m * 1000 + static_cast<size_t>(to);  // distinct payload per message
          if (rank == from) {
            Bytes data = make_input(from, count, type, first);
            backend.send(data.data(), count, type, to);
          } else {
            Bytes data(count * col::element_size(type), 0xab);
            backend.recv(data.data(), count, type, from);
            expect_elements(
                data, make_input(from, count, type, first), type,
                "message " + std::to_string(m) + " from " + std::to_string(from) + " to " + std::to_string(to));
          }
        }
      }
    }
  });
}

// Neighbour exchange, the MPI way: even ranks send first, odd ranks receive first. The
// messages are far larger than socket buffers or shared-memory slots, so a send completes
// only as its receiver drains it.
TEST_P(BackendConformance, LargeSendRecvExchangeEvenRanksFirst) {
  const int world = this->world();
  if (world == 1) GTEST_SKIP() << "no peer to send to";
  Group group = make("exchange");
  on_every_rank(group, [&](int rank, Backend& backend) {
    const int next = (rank + 1) % world, prev = (rank + world - 1) % world;
    for (int round = 0; round < 2; ++round) {
      const size_t count = kLargeCount + round;
      Bytes out = make_input(rank, count, DataType::kFloat32, round);
      Bytes in(count * sizeof(float), 0xab);
      if (rank % 2 == 0) {
        backend.send(out.data(), count, DataType::kFloat32, next);
        backend.recv(in.data(), count, DataType::kFloat32, prev);
      } else {
        backend.recv(in.data(), count, DataType::kFloat32, prev);
        backend.send(out.data(), count, DataType::kFloat32, next);
      }
      expect_elements(
          in, make_input(prev, count, DataType::kFloat32, round), DataType::kFloat32,
          "round " + std::to_string(round) + " from rank " + std::to_string(prev) + " on rank " + std::to_string(rank));
    }
  });
}

// About a million elements per op: ring allreduce and reduce with several segments per rank,
// many pipelined pieces per step, and counts that are powers of two and counts divisible by
// none of 2, 3, 4.
TEST_P(BackendConformance, LargeBuffers) {
  const int world = this->world();
  Group group = make("large");
  on_every_rank(group, [&](int rank, Backend& backend) {
    struct Case {
      DataType type;
      ReduceOp op;
      size_t count;
    };
    constexpr size_t kOdd = kLargeCount + 3;
    const Case cases[] = {{DataType::kFloat32, ReduceOp::kSum, kLargeCount},
                          {DataType::kFloat32, ReduceOp::kAvg, kLargeCount},
                          {DataType::kFloat32, ReduceOp::kMin, kLargeCount},
                          {DataType::kFloat32, ReduceOp::kMax, kLargeCount},
                          {DataType::kFloat32, ReduceOp::kProduct, kLargeCount},
                          {DataType::kBFloat16, ReduceOp::kSum, kLargeCount},
                          {DataType::kUInt8, ReduceOp::kMax, kLargeCount},
                          {DataType::kInt64, ReduceOp::kSum, kLargeCount},
                          {DataType::kFloat32, ReduceOp::kSum, kOdd},
                          {DataType::kFloat32, ReduceOp::kAvg, kOdd},
                          {DataType::kBFloat16, ReduceOp::kSum, kOdd},
                          {DataType::kUInt8, ReduceOp::kMax, kOdd},
                          {DataType::kInt64, ReduceOp::kProduct, kOdd}};
    for (const auto& [type, op, count] : cases) {
      Bytes data = make_input(rank, count, type);
      backend.allreduce(data.data(), count, type, op);
      expect_elements(data, expected_reduction(count, type, op, world), type,
                      describe("allreduce", type, op, count, rank, world));
    }
    {
      const int root = world - 1;
      Bytes data = make_input(rank, kLargeCount, DataType::kFloat32);
      backend.reduce(data.data(), kLargeCount, DataType::kFloat32, ReduceOp::kSum, root);
      expect_elements(data,
                      rank == root ? expected_reduction(kLargeCount, DataType::kFloat32, ReduceOp::kSum, world)
                                   : make_input(rank, kLargeCount, DataType::kFloat32),
                      DataType::kFloat32,
                      describe("reduce", DataType::kFloat32, ReduceOp::kSum, kLargeCount, rank, world));
    }
    {
      const int root = world / 2;
      Bytes data = make_input(rank, kLargeCount, DataType::kFloat32);
      backend.broadcast(data.data(), kLargeCount, DataType::kFloat32, root);
      expect_elements(data, make_input(root, kLargeCount, DataType::kFloat32), DataType::kFloat32,
                      describe("broadcast", DataType::kFloat32, {}, kLargeCount, rank, world));
    }
    {
      const size_t count = kLargeCount / 4 + 1;
      Bytes send = make_input(rank, count, DataType::kFloat32);
      Bytes recv(world * count * sizeof(float));
      backend.allgather(send.data(), recv.data(), count, DataType::kFloat32);
      expect_elements(recv, gathered_inputs(world, count, DataType::kFloat32), DataType::kFloat32,
                      describe("allgather", DataType::kFloat32, {}, count, rank, world));
    }
    {
      const size_t count = kLargeCount / world + 1;
      Bytes send = make_input(rank, world * count, DataType::kFloat32);
      Bytes recv(count * sizeof(float));
      backend.reduce_scatter(send.data(), recv.data(), count, DataType::kFloat32, ReduceOp::kSum);
      expect_elements(recv, expected_reduction(count, DataType::kFloat32, ReduceOp::kSum, world, rank * count),
                      DataType::kFloat32,
                      describe("reduce_scatter", DataType::kFloat32, ReduceOp::kSum, count, rank, world));
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendConformance, ::testing::ValuesIn(every_backend_and_world_size()),
                         [](const ::testing::TestParamInfo<Conformance>& info) {
                           return std::string(info.param.backend) + "_world" + std::to_string(info.param.world);
                         });

}  // namespace
