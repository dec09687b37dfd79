#pragma once

#include <grpcpp/grpcpp.h>

#include <map>
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
grpc::Status check_token(const grpc::ServerContextBase& ctx, const char* method);

/// TLS for every gRPC server and channel on TCP (`gantry start --tls-cert/--tls-key`):
/// PEM files of this process's certificate chain and key, and of the CA that signed the
/// cluster's certificates (empty: the certificate is self-signed and is its own CA).
/// Unix sockets stay plaintext: they never leave the machine.
struct TlsFiles {
  std::string cert, key, ca;
  bool enabled() const { return !cert.empty(); }
};
/// Turns TLS on (or off, for empty files) for servers and channels made from now on.
/// Throws gantry::Error naming a file that cannot be read, or a key without a cert.
void set_tls(const TlsFiles& files);
TlsFiles tls_files();
bool tls_enabled();
/// GANTRY_TLS_CERT, GANTRY_TLS_KEY, GANTRY_TLS_CA.
TlsFiles tls_from_env();
/// Adds those variables for the current TLS files to `env` (a child's environment), so
/// tls_from_env() in the child finds them; nothing when TLS is off.
void add_tls_environment(std::map<std::string, std::string>& env);
/// Credentials for a server listening on `address` ("unix:..." or "host:port").
std::shared_ptr<grpc::ServerCredentials> server_credentials(const std::string& address);

/// A channel whose every call carries the cluster token, over TLS when it is on; used by
/// make_channel.
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
