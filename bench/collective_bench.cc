// Allreduce of float32 buffers between 2 ranks on one node, through each gantry backend,
// next to two baselines measured in the same run: libgloo's own ring allreduce over TCP
// loopback (called directly, two threads of this process) and a memcpy of the same bytes.
//
//     gantry_collective_bench            # 4 KiB .. 256 MiB
//     gantry_collective_bench --quick    # 4 KiB .. 1 MiB, few iterations (the smoke test)
//
// Output: one line per measurement, `allreduce BACKEND BYTES MS ALGBW_GBPS BUSBW_GBPS`
// (BACKEND: shm, tcp, hierarchical, gloo, libgloo_baseline, memcpy_baseline); lines
// starting with '#' are comments. With 2 ranks on one node, hierarchical is its shared
// memory group plus a leaders' group of one. NCCL is not measured here. MS is the median over the iterations. Bus bandwidth = algbw * 2(n-1)/n.
// Speed never fails the run: the exit status is non-zero only when an op throws.

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/hash_store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "gantry/collective.h"
#include "gantry/gantry.h"

namespace col = gantry::collective;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kWorld = 2;

std::vector<int64_t> sizes_for(bool quick) {
  std::vector<int64_t> out;
  int64_t top = quick ? (1 << 20) : (256ll << 20);
  for (int64_t b = 4096; b <= top; b *= 4) {
    out.push_back(b);
    // The gradient size of an MLP 784-1024-1024-10, the target point.
    if (!quick && b == (4 << 20)) out.push_back(7'218'216);
  }
  return out;
}

int iterations_for(int64_t bytes, bool quick) {
  if (quick) return 3;
  if (bytes >= (64ll << 20)) return 5;
  if (bytes >= (4ll << 20)) return 20;
  return 100;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void print(const char* backend, int64_t bytes, double ms) {
  double algbw = static_cast<double>(bytes) / (ms / 1e3) / 1e9;
  double busbw = algbw * 2.0 * (kWorld - 1) / kWorld;
  std::cout << "allreduce " << backend << " " << bytes << " " << std::fixed << std::setprecision(4) << ms << " "
            << std::setprecision(3) << algbw << " " << busbw << std::endl;
}

// One rank's part of a gantry measurement: the same calls on both ranks, a barrier before
// each timed op so both start together. Returns the per-op times in ms.
std::vector<double> gantry_rank(col::Communicator& comm, int64_t bytes, int iterations) {
  std::vector<float> data(static_cast<size_t>(bytes) / 4, 1.0f);
  std::vector<double> times;
  comm.allreduce(std::span<float>(data));  // warm-up: maps, first touches
  for (int i = 0; i < iterations; ++i) {
    comm.barrier();
    auto t0 = Clock::now();
    comm.allreduce(std::span<float>(data));
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return times;
}

class Peer {
 public:
  static Peer* create() { return new Peer(); }
  // Rank 1 of `group`: follows the driver through every size.
  int follow(std::string group, int backend, bool quick) {
    auto comm = col::Communicator::join(
        {.group = group, .world_size = kWorld, .rank = 1, .backend = static_cast<col::BackendKind>(backend)});
    for (int64_t bytes : sizes_for(quick)) gantry_rank(comm, bytes, iterations_for(bytes, quick));
    comm.barrier();
    return 0;
  }
};

void bench_gantry(col::BackendKind kind, bool quick) {
  std::string group = std::string("bench-") + col::to_string(kind);
  auto peer = gantry::actor(Peer::create).options({.num_cpus = 1}).remote();
  auto done = peer.task(&Peer::follow).remote(group, static_cast<int>(kind), quick);
  auto comm = col::Communicator::join({.group = group, .world_size = kWorld, .rank = 0, .backend = kind});
  for (int64_t bytes : sizes_for(quick)) print(col::to_string(kind), bytes, median(gantry_rank(comm, bytes, iterations_for(bytes, quick))));
  comm.barrier();
  done.get();
  gantry::kill(peer);
}

// libgloo's ring allreduce, two threads of this process over TCP loopback.
void bench_libgloo(bool quick) {
  auto store = std::make_shared<gloo::rendezvous::HashStore>();
  std::vector<std::vector<double>> times(kWorld);
  std::vector<std::thread> threads;
  std::vector<int64_t> sizes = sizes_for(quick);
  for (int rank = 0; rank < kWorld; ++rank) {
    threads.emplace_back([&, rank] {
      gloo::transport::tcp::attr attr;
      attr.hostname = "127.0.0.1";
      auto device = gloo::transport::tcp::CreateDevice(attr);
      auto context = std::make_shared<gloo::rendezvous::Context>(rank, kWorld);
      context->connectFullMesh(*store, device);
      for (int64_t bytes : sizes) {
        std::vector<float> data(static_cast<size_t>(bytes) / 4, 1.0f);
        std::vector<double> mine;
        for (int i = -1; i < iterations_for(bytes, quick); ++i) {
          gloo::AllreduceOptions opts(context);
          opts.setOutput(data.data(), data.size());
          opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
          opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
          opts.setTag(static_cast<uint32_t>(i + 2));
          gloo::BarrierOptions bopts(context);
          gloo::barrier(bopts);
          auto t0 = Clock::now();
          gloo::allreduce(opts);
          if (i >= 0) mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
        if (rank == 0) print("libgloo_baseline", bytes, median(mine));
      }
    });
  }
  for (auto& t : threads) t.join();
}

void bench_memcpy(bool quick) {
  for (int64_t bytes : sizes_for(quick)) {
    std::vector<char> a(static_cast<size_t>(bytes), 1), b(static_cast<size_t>(bytes), 2);
    std::vector<double> times;
    std::memcpy(b.data(), a.data(), a.size());
    for (int i = 0; i < iterations_for(bytes, quick); ++i) {
      auto t0 = Clock::now();
      std::memcpy(b.data(), a.data(), a.size());
      times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      a[static_cast<size_t>(i) % a.size()] = b[0];  // keep the copy observable
    }
    print("memcpy_baseline", bytes, median(times));
  }
}

}  // namespace

GANTRY_REMOTE(Peer::create, &Peer::follow);

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (std::getenv("GANTRY_WORKER") == nullptr) {
      std::cerr << "usage: gantry_collective_bench [--quick]\n";
      return 2;
    }
  }
  gantry::init(argc, argv, {.num_cpus = 2});
  std::cout << "# allreduce BACKEND BYTES MS ALGBW_GBPS BUSBW_GBPS  (2 ranks, one node, float32 sum, median)\n";
  std::cout << "# targets: at 7218216 bytes shm >= 4x faster than libgloo_baseline; at 67108864 shm busbw >= 0.5x "
               "memcpy_baseline\n";
  try {
    bench_memcpy(quick);
    bench_libgloo(quick);
    bench_gantry(col::BackendKind::kSharedMemory, quick);
    bench_gantry(col::BackendKind::kTcp, quick);
    bench_gantry(col::BackendKind::kHierarchical, quick);
    bench_gantry(col::BackendKind::kGloo, quick);
    // NCCL runs on device buffers, which this program (built without the CUDA runtime)
    // does not allocate.
    std::cout << "# nccl: not measured here (device buffers); nccl_backend_test runs it on a GPU machine\n";
  } catch (const std::exception& e) {
    std::cerr << "collective_bench: " << e.what() << "\n";
    gantry::shutdown();
    return 1;
  }
  gantry::shutdown();
  return 0;
}
