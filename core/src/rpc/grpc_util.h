#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gantry/common.pb.h"
#include "scheduler/node_choice.h"
#include "scheduler/resource_set.h"

namespace gantry::proto {
class PlacementGroupSpec;
}

namespace gantry::internal {

/// The bundles of a placement group that can hold `request`: bundle `bundle_index`, or
/// any when it is -1. `held` gets the resources of every bundle looked at ("{CPU: 1},
/// {GPU: 1}"), for the error when none can.
std::vector<int> bundles_holding(const proto::PlacementGroupSpec& spec, int bundle_index, const ResourceSet& request,
                                 std::string* held);

/// A channel to `address` ("unix:/path" or "host:port") with gantry's settings
/// (no message size limit).
std::shared_ptr<grpc::Channel> make_channel(const std::string& address);

/// Keeps gRPC's global state for the rest of the process: the library itself and the
/// completion queue on which gRPC runs client callbacks. Call before the first channel.
///
/// Without this, the last channel of a process can be destroyed inside a callback (a
/// finished call's ClientContext holds its channel), on the very thread that polls that
/// queue. gRPC then shuts the queue down and frees it under its own poller, which aborts
/// the program (`grpc_cq_internal_unref: prior > 0`). Idempotent and thread-safe.
void keep_grpc_for_process();

/// Shared channels, one per address. Thread-safe.
class ChannelCache {
 public:
  std::shared_ptr<grpc::Channel> get(const std::string& address);

 private:
  std::mutex mu_;  // guards channels_
  std::unordered_map<std::string, std::shared_ptr<grpc::Channel>> channels_;
};

/// Server builder settings shared by every gantry service.
void configure_server(grpc::ServerBuilder& builder);

proto::Resources to_proto(const ResourceSet& set);
ResourceSet from_proto(const proto::Resources& resources);

/// Builds the ErrorInfo carried to a caller.
proto::ErrorInfo make_error(proto::ErrorInfo::Kind kind, const std::string& message,
                            const std::string& function = {}, const std::string& remote_type = {});

/// Throws the gantry exception that `error` describes.
[[noreturn]] void throw_error(const proto::ErrorInfo& error);

/// "unix:" + path.
std::string unix_address(const std::string& path);

/// The scheduler's form of a task's or actor's strategy.
Placement from_proto(const proto::SchedulingStrategy& strategy);

/// A TCP port on `host` held for a gRPC server about to be built: bound with SO_REUSEPORT
/// (as gRPC binds its own) but not listening, so no other program takes it meanwhile and
/// the server's address is known before the server exists. Release after the server has
/// bound it. Throws gantry::Error when no port can be had.
class PortReservation {
 public:
  explicit PortReservation(const std::string& host);
  ~PortReservation();
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;
  /// "host:port" (IPv6 hosts in brackets).
  const std::string& address() const { return address_; }

 private:
  int fd_ = -1;
  std::string address_;
};

/// Milliseconds since the Unix epoch (for times shown to users).
int64_t unix_time_ms();

/// This machine's host name (gethostname), or "localhost" when it has none.
std::string host_name();

/// Starts a unary call and does not wait for, or look at, its reply. `start` is called with
/// (context, request, reply, callback) and passes them to a stub's `async()` method; the
/// call's state lives until gRPC runs the callback. `done`, if given, runs then (on a gRPC
/// thread), whatever the outcome.
///
///     send_and_forget<proto::Empty>(request, 5s, [&](auto... a) { stub->async()->Delete(a...); });
template <typename Reply, typename Request, typename Start>
void send_and_forget(Request request, std::chrono::milliseconds deadline, Start&& start,
                     std::function<void()> done = {}) {
  struct Call {
    grpc::ClientContext ctx;
    Request request;
    Reply reply;
  };
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  call->ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  start(&call->ctx, &call->request, &call->reply, [call, done = std::move(done)](grpc::Status) {
    if (done) done();
  });
}

}  // namespace gantry::internal
