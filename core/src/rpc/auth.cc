#include "rpc/auth.h"

#include <grpcpp/support/client_interceptor.h>

#include <fstream>
#include <mutex>

#include "common/logging.h"
#include "gantry/errors.h"

namespace gantry::internal {
namespace {

constexpr char kTokenKey[] = "gantry-token";

std::mutex g_token_mu;
std::string g_token;  // guarded by g_token_mu

class AddTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA))
      methods->GetSendInitialMetadata()->insert({kTokenKey, cluster_token()});
    methods->Proceed();
  }
};

class AddTokenFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new AddTokenInterceptor();
  }
};

}  // namespace

void set_cluster_token(std::string token) {
  std::lock_guard<std::mutex> lock(g_token_mu);
  g_token = std::move(token);
}

std::string cluster_token() {
  std::lock_guard<std::mutex> lock(g_token_mu);
  return g_token;
}

std::string generate_token() {
  unsigned char bytes[32];
  std::ifstream random("/dev/urandom", std::ios::binary);
  if (!random.read(reinterpret_cast<char*>(bytes), sizeof bytes))
    throw Error("cannot read /dev/urandom to make the cluster token");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * sizeof bytes);
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

bool token_matches(const std::string& presented) {
  const std::string expected = cluster_token();
  // Constant time in the token's content: no early exit on the first differing byte.
  unsigned char diff = presented.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i] ^ (i < presented.size() ? presented[i] : 0));
  return diff == 0;
}

grpc::Status check_token(const grpc::ServerContext& ctx, const char* method) {
  const auto& metadata = ctx.client_metadata();
  auto it = metadata.find(kTokenKey);
  std::string presented = it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
  if (token_matches(presented)) return grpc::Status::OK;
  GANTRY_LOG_WARN("refused {} from {}: {}", method, ctx.peer(),
                  presented.empty() ? "no cluster token" : "wrong cluster token");
  return {grpc::StatusCode::UNAUTHENTICATED,
          "this gantry cluster requires its token: set GANTRY_TOKEN or read it from the session directory"};
}

std::shared_ptr<grpc::Channel> make_authenticated_channel(const std::string& address,
                                                          const grpc::ChannelArguments& args) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<AddTokenFactory>());
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, grpc::InsecureChannelCredentials(), args,
                                                                 std::move(interceptors));
}

}  // namespace gantry::internal
