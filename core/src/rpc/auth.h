#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

namespace gantry::internal {

/// The cluster token: a secret every gantry call carries (gRPC metadata `gantry-token`,
/// or the first frame of a framed task socket) and every gantry endpoint requires.
/// Set at start-up, before any channel or server is made. Thread-safe: a process that
/// starts a new session may still have calls of the old one finishing.
void set_cluster_token(std::string token);
std::string cluster_token();

/// A fresh token: 32 random bytes from the kernel, as 64 hex digits.
std::string generate_token();

/// Whether `presented` is the cluster token (compared in constant time).
bool token_matches(const std::string& presented);

/// OK when the call carries the cluster token. Otherwise logs the refusal (method and
/// peer) and returns UNAUTHENTICATED; the handler must then return it without acting.
grpc::Status check_token(const grpc::ServerContext& ctx, const char* method);

/// An insecure channel whose every call carries the cluster token; used by make_channel.
std::shared_ptr<grpc::Channel> make_authenticated_channel(const std::string& address,
                                                          const grpc::ChannelArguments& args);

}  // namespace gantry::internal

/// First statement of every gantry RPC handler: refuses calls without the cluster token.
#define GANTRY_REQUIRE_TOKEN(ctx)                                                       \
  do {                                                                                  \
    if (grpc::Status token_status = ::gantry::internal::check_token(*(ctx), __func__); \
        !token_status.ok())                                                             \
      return token_status;                                                              \
  } while (0)
