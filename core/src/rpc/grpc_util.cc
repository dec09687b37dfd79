#include "rpc/grpc_util.h"

#include <grpcpp/generic/generic_stub.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>

#include "gantry/errors.h"
#include "gantry/head.pb.h"
#include "rpc/auth.h"
#include "rpc/frame_socket.h"

namespace gantry::internal {

std::shared_ptr<grpc::Channel> make_channel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Each channel gets its own connection; sharing a global subchannel pool would make
  // unrelated callers of one worker contend on one HTTP/2 connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return make_authenticated_channel(address, args);
}

void keep_grpc_for_process() {
  static const bool kept = [] {
    grpc_init();
    // A channel that is never destroyed, with one callback call made on it: the call
    // creates the channel's reference to gRPC's callback queue, which is then never
    // released. Nothing listens at the address; the call fails at once.
    struct Pin {
      std::shared_ptr<grpc::Channel> channel =
          grpc::CreateChannel("unix:/nonexistent/gantry-pin", grpc::InsecureChannelCredentials());
      grpc::GenericStub stub{channel};
      grpc::ClientContext ctx;
      grpc::ByteBuffer request, reply;
    };
    // Never freed, and reachable from a static (so leak checkers see it is kept on purpose).
    static Pin* pin = new Pin;
    grpc::Slice empty;
    pin->request = grpc::ByteBuffer(&empty, 1);
    pin->ctx.set_deadline(std::chrono::system_clock::now());
    pin->stub.UnaryCall(&pin->ctx, "/gantry.Pin/Pin", grpc::StubOptions(), &pin->request, &pin->reply,
                        [](grpc::Status) {});
    return true;
  }();
  (void)kept;
}

std::shared_ptr<grpc::Channel> ChannelCache::get(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& channel = channels_[address];
  if (!channel) channel = make_channel(address);
  return channel;
}

void configure_server(grpc::ServerBuilder& builder) {
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
}

proto::Resources to_proto(const ResourceSet& set) {
  proto::Resources out;
  for (const auto& [name, q] : set.quantities()) (*out.mutable_quantities())[name] = q.raw();
  return out;
}

ResourceSet from_proto(const proto::Resources& resources) {
  ResourceSet out;
  for (const auto& [name, raw] : resources.quantities())
    if (raw > 0) out.set(name, FixedPoint::from_raw(raw));
  return out;
}

proto::ErrorInfo make_error(proto::ErrorInfo::Kind kind, const std::string& message,
                            const std::string& function, const std::string& remote_type) {
  proto::ErrorInfo e;
  e.set_kind(kind);
  e.set_message(message);
  e.set_function(function);
  e.set_remote_type(remote_type);
  return e;
}

void throw_error(const proto::ErrorInfo& e) {
  switch (e.kind()) {
    case proto::ErrorInfo::TASK_ERROR:
      throw TaskError(e.remote_type(), e.message(), RemoteSite{e.function(), e.node(), e.pid()});
    case proto::ErrorInfo::WORKER_CRASHED:
      throw WorkerCrashedError(e.message());
    case proto::ErrorInfo::ACTOR_DIED:
      throw ActorDiedError(e.message());
    case proto::ErrorInfo::INFEASIBLE:
      throw InfeasibleError(e.message());
    case proto::ErrorInfo::OBJECT_LOST:
      throw ObjectLostError(e.message());
    case proto::ErrorInfo::OBJECT_STORE_FULL:
      throw ObjectStoreFullError(e.message());
    default:
      throw Error(e.message());
  }
}

std::string unix_address(const std::string& path) { return "unix:" + path; }

std::vector<int> bundles_holding(const proto::PlacementGroupSpec& spec, int bundle_index, const ResourceSet& request,
                                 std::string* held) {
  std::vector<int> out;
  held->clear();
  for (int i = 0; i < spec.bundles_size(); ++i) {
    if (bundle_index >= 0 && i != bundle_index) continue;
    ResourceSet bundle = from_proto(spec.bundles(i));
    *held += (held->empty() ? "" : ", ") + bundle.to_string();
    if (bundle.contains(request)) out.push_back(i);
  }
  return out;
}

Placement from_proto(const proto::SchedulingStrategy& strategy) {
  Placement placement;
  switch (strategy.kind()) {
    case proto::SchedulingStrategy::SPREAD: placement.kind = Placement::Kind::kSpread; break;
    case proto::SchedulingStrategy::NODE_AFFINITY:
      placement.kind = Placement::Kind::kNodeAffinity;
      placement.node = UniqueId::from_binary(strategy.node_id());
      placement.soft = strategy.soft();
      break;
    case proto::SchedulingStrategy::PLACEMENT_GROUP:
      placement.kind = Placement::Kind::kPlacementGroup;
      placement.group = UniqueId::from_binary(strategy.placement_group_id());
      placement.bundle = strategy.bundle_index();
      break;
    default: break;
  }
  return placement;
}

PortReservation::PortReservation(const std::string& host) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string error;
  if (!numeric_address(host, 0, &addr, &len, &error)) throw Error("cannot serve on " + error);
  fd_ = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd_ < 0 || ::setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
      ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 || (address_ = bound_address(fd_, host)).empty()) {
    std::string why = std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    throw Error("cannot get a TCP port on " + host + ": " + why);
  }
}

PortReservation::~PortReservation() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t unix_time_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace gantry::internal
