// libFuzzer target: hostile bytes against the value deserialiser and against every method
// of the head and the node agent, served for real (gRPC over a Unix socket, with the
// right cluster token, so the bytes reach the handlers). Nothing may crash, hang or leak;
// bad input must come back as an error.
//
// Input layout: byte 0 picks the target (0-3: a value type to decode; otherwise one RPC
// method, by index over the services' methods); the rest is the payload.
//
//   BUILD_DIR=build-fuzz GANTRY_SANITIZE=fuzzer scripts/dev build
//   build-fuzz/tests/gantry_fuzz -max_total_time=60 tests/fuzz/corpus
#include <google/protobuf/descriptor.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "agent/node_agent.h"
#include "gantry/codec.h"
#include "gantry/errors.h"
#include "head/head_service.h"
#include "rpc/auth.h"
#include "rpc/grpc_util.h"
#include "support/generic_call.h"

namespace {

using namespace std::chrono_literals;

struct Reading {
  std::string station;
  double temp = 0;
  std::optional<int32_t> humidity;
  GANTRY_FIELDS(station, temp, humidity);
};

template <typename T>
void decode_quietly(const uint8_t* data, size_t size) {
  try {
    (void)gantry::decode_from<T>(data, size);
  } catch (const gantry::Error&) {
    // A clean, typed refusal is the expected outcome for most inputs.
  }
}

/// A head and an agent serving on Unix sockets in a private directory, for the whole run.
class Services {
 public:
  Services() {
    dir_ = std::filesystem::temp_directory_path() / ("gantry_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_ / "store");
    gantry::internal::set_cluster_token("fuzz-token");
    head_ = std::make_unique<gantry::internal::HeadService>(gantry::internal::unix_address((dir_ / "head.sock").string()));
    head_->set_executable_dir((dir_ / "executables").string());  // so PutExecutable's bytes are checked
    head_->start();
    gantry::internal::NodeAgentConfig config;
    config.node_id = gantry::UniqueId::generate();
    config.listen_address = gantry::internal::unix_address((dir_ / "agent.sock").string());
    config.head_address = head_->address();
    config.total = gantry::internal::ResourceSet::from_doubles({{"CPU", 2}, {"GPU", 2}, {"memory", 1e9}});
    config.num_gpus = 2;
    config.store_dir = (dir_ / "store").string();
    config.store_capacity = 64 << 20;
    // Jobs the bytes register may name any program: this node runs none (nothing
    // executable is under its allowed directory), and lease requests must fail cleanly.
    config.allowed_executable_dirs = {(dir_ / "store").string()};
    agent_ = std::make_unique<gantry::internal::NodeAgent>(config);
    agent_->start();

    const auto* pool = google::protobuf::DescriptorPool::generated_pool();
    for (auto [service, address] : {std::pair{"gantry.proto.Head", head_->address()},
                                    std::pair{"gantry.proto.NodeAgent", agent_->address()}}) {
      const auto* s = pool->FindServiceByName(service);
      auto channel = gantry::internal::make_channel(address);
      for (int i = 0; i < s->method_count(); ++i)
        methods_.push_back({"/" + std::string(service) + "/" + s->method(i)->name(), channel});
    }
  }

  /// Sends `payload` as the one request message of method `index` (the channel adds the
  /// token); any status is fine.
  void call(size_t index, const uint8_t* data, size_t size) {
    const auto& [method, channel] = methods_[index % methods_.size()];
    // Handlers that wait (GetActor, RequestLease) must give up when the caller does.
    (void)gantry::test_support::call_generic(channel, method, /*token=*/"", std::string(reinterpret_cast<const char*>(data), size),
                                        300ms);
  }

 private:
  std::filesystem::path dir_;
  std::unique_ptr<gantry::internal::HeadService> head_;
  std::unique_ptr<gantry::internal::NodeAgent> agent_;
  std::vector<std::pair<std::string, std::shared_ptr<grpc::Channel>>> methods_;
};

Services& services() {
  static auto* s = new Services();  // lives for the whole fuzzing run
  return *s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t which = data[0];
  ++data;
  --size;
  switch (which) {
    case 0:
      decode_quietly<std::vector<double>>(data, size);
      break;
    case 1:
      decode_quietly<std::map<std::string, std::vector<int64_t>>>(data, size);
      break;
    case 2:
      decode_quietly<std::vector<Reading>>(data, size);
      break;
    case 3:
      decode_quietly<std::variant<int32_t, std::string, std::optional<std::vector<uint8_t>>>>(data, size);
      break;
    default:
      services().call(which - 4u, data, size);
  }
  return 0;
}
