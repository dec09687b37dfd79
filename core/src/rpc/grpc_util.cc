#include "rpc/grpc_util.h"

#include <unistd.h>

#include <chrono>

#include "gantry/errors.h"
#include "rpc/auth.h"

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
