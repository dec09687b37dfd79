// train_launch: an ordinary LibTorch c10d program that knows nothing of gantry. It reads
// torchrun's environment, meets its peers through a c10d::TCPStore (rank 0 serves it),
// allreduces a tensor over c10d::ProcessGroupGloo and checks the sum. Run it on a gantry
// cluster, unchanged:
//
//     gantry train launch --workers 2 -- ./train_launch
//
// or by hand, one process per rank: RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 ./train_launch
//
//     train_launch [--fail-once-at-rank R --marker FILE]
//
// With --fail-once-at-rank, rank R exits with status 3 when FILE does not exist yet,
// creating it: the first run fails, a restarted one goes through.

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <vector>

namespace {

std::string env(const char* name, const char* fallback = nullptr) {
  const char* value = std::getenv(name);
  if (value != nullptr) return value;
  if (fallback != nullptr) return fallback;
  throw std::runtime_error(std::string(name) + " is not set: run under `gantry train launch` or torchrun");
}

int env_int(const char* name) { return std::stoi(env(name)); }

std::shared_ptr<::gloo::transport::Device> gloo_device() {
  // As torch.distributed does: the interface named by GLOO_SOCKET_IFNAME, else the address
  // this machine's host name resolves to.
  std::string interface = env("GLOO_SOCKET_IFNAME", "");
  if (!interface.empty()) return c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

struct Args {
  int fail_once_at_rank = -1;
  std::string marker;
};

Args parse_args(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--fail-once-at-rank" && i + 1 < argc) {
      args.fail_once_at_rank = std::stoi(argv[++i]);
    } else if (arg == "--marker" && i + 1 < argc) {
      args.marker = argv[++i];
    } else {
      throw std::invalid_argument("usage: train_launch [--fail-once-at-rank R --marker FILE]");
    }
  }
  if (args.fail_once_at_rank >= 0 && args.marker.empty())
    throw std::invalid_argument("--fail-once-at-rank needs --marker FILE");
  return args;
}

int run(int argc, char** argv) {
  Args args = parse_args(argc, argv);
  const int rank = env_int("RANK");
  const int world = env_int("WORLD_SIZE");
  const std::string master_addr = env("MASTER_ADDR");
  const int master_port = env_int("MASTER_PORT");
  std::cout << "env RANK=" << rank << " LOCAL_RANK=" << env("LOCAL_RANK", "-") << " WORLD_SIZE=" << world
            << " LOCAL_WORLD_SIZE=" << env("LOCAL_WORLD_SIZE", "-") << " NODE_RANK=" << env("NODE_RANK", "-")
            << " MASTER_ADDR=" << master_addr << " MASTER_PORT=" << master_port
            << " TORCHELASTIC_RESTART_COUNT=" << env("TORCHELASTIC_RESTART_COUNT", "-")
            << " TORCHELASTIC_MAX_RESTARTS=" << env("TORCHELASTIC_MAX_RESTARTS", "-")
            << " TORCHELASTIC_RUN_ID=" << env("TORCHELASTIC_RUN_ID", "-")
            << " OMP_NUM_THREADS=" << env("OMP_NUM_THREADS", "-") << std::endl;

  if (rank == args.fail_once_at_rank && !std::ifstream(args.marker)) {
    std::ofstream(args.marker) << "failed once\n";
    std::cerr << "failing on purpose: rank " << rank << ", first run" << std::endl;
    return 3;
  }

  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(master_port);
  store_options.isServer = rank == 0;
  store_options.numWorkers = world;
  store_options.timeout = std::chrono::seconds(60);
  auto store = c10::make_intrusive<c10d::TCPStore>(master_addr, store_options);

  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(60));
  options->devices.push_back(gloo_device());
  auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);

  // Every rank contributes rank + 1: the sum is world * (world + 1) / 2 everywhere.
  std::vector<at::Tensor> tensors{at::full({4}, static_cast<float>(rank + 1))};
  group->allreduce(tensors)->wait();
  const float expected = static_cast<float>(world * (world + 1)) / 2.0f;
  const float got = tensors[0][0].item<float>();
  bool ok = at::allclose(tensors[0], at::full({4}, expected));

  // Rank 0's value reaches everyone (one tensor per device: this is the CPU).
  std::vector<at::Tensor> value{at::full({2}, rank == 0 ? 42.0f : -1.0f)};
  group->broadcast(value)->wait();
  ok = ok && at::allclose(value[0], at::full({2}, 42.0f));
  group->barrier()->wait();

  std::cout << "rank " << rank << " of " << world << ": allreduce sum " << got << " (expected " << expected
            << "), broadcast " << value[0][0].item<float>() << (ok ? ": OK" : ": WRONG") << std::endl;
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::cerr << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "train_launch: " << e.what() << "\n";
    return 1;
  }
}
