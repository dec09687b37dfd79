#include "rpc/auth.h"

#include <grpcpp/support/client_interceptor.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <mutex>

#include "common/logging.h"
#include "gantry/errors.h"

namespace gantry::internal {
namespace {

constexpr char kTokenKey[] = "gantry-token";

std::mutex g_token_mu;
std::string g_token;  // guarded by g_token_mu

struct TlsState {
  TlsFiles files;
  std::string cert, key, ca;  // PEM contents
};
std::mutex g_tls_mu;
TlsState g_tls;  // guarded by g_tls_mu

std::string read_pem(const std::string& path, const char* what) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) throw Error(std::string("cannot read the TLS ") + what + " " + path);
  std::string pem = text.str();
  if (pem.find("-----BEGIN") == std::string::npos)
    throw Error(std::string("the TLS ") + what + " " + path + " is not a PEM file (or cannot be read)");
  return pem;
}

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

grpc::Status check_token(const grpc::ServerContextBase& ctx, const char* method) {
  const auto& metadata = ctx.client_metadata();
  auto it = metadata.find(kTokenKey);
  std::string presented = it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
  if (token_matches(presented)) return grpc::Status::OK;
  GANTRY_LOG_WARN("refused {} from {}: {}", method, ctx.peer(),
                  presented.empty() ? "no cluster token" : "wrong cluster token");
  return {grpc::StatusCode::UNAUTHENTICATED,
          "this gantry cluster requires its token: set GANTRY_TOKEN or read it from the session directory"};
}

void set_tls(const TlsFiles& files) {
  TlsState state;
  state.files = files;
  if (files.enabled()) {
    if (files.key.empty()) throw Error("TLS needs a key (--tls-key) with the certificate " + files.cert);
    state.cert = read_pem(files.cert, "certificate");
    state.key = read_pem(files.key, "key");
    state.ca = files.ca.empty() ? state.cert : read_pem(files.ca, "CA certificate");
  } else if (!files.key.empty()) {
    throw Error("TLS needs a certificate (--tls-cert) with the key " + files.key);
  }
  std::lock_guard<std::mutex> lock(g_tls_mu);
  g_tls = std::move(state);
}

TlsFiles tls_files() {
  std::lock_guard<std::mutex> lock(g_tls_mu);
  return g_tls.files;
}

bool tls_enabled() { return tls_files().enabled(); }

constexpr char kTlsCertVar[] = "GANTRY_TLS_CERT";
constexpr char kTlsKeyVar[] = "GANTRY_TLS_KEY";
constexpr char kTlsCaVar[] = "GANTRY_TLS_CA";

TlsFiles tls_from_env() {
  auto get = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v != nullptr ? v : "");
  };
  return {get(kTlsCertVar), get(kTlsKeyVar), get(kTlsCaVar)};
}

void add_tls_environment(std::map<std::string, std::string>& env) {
  TlsFiles tls = tls_files();
  if (!tls.enabled()) return;
  env[kTlsCertVar] = tls.cert;
  env[kTlsKeyVar] = tls.key;
  env[kTlsCaVar] = tls.ca;
}

std::shared_ptr<grpc::ServerCredentials> server_credentials(const std::string& address) {
  std::lock_guard<std::mutex> lock(g_tls_mu);
  if (!g_tls.files.enabled() || address.rfind("unix:", 0) == 0) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_root_certs = g_tls.ca;
  options.pem_key_cert_pairs.push_back({g_tls.key, g_tls.cert});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::Channel> make_authenticated_channel(const std::string& address,
                                                          const grpc::ChannelArguments& args) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<AddTokenFactory>());
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  {
    std::lock_guard<std::mutex> lock(g_tls_mu);
    if (g_tls.files.enabled() && address.rfind("unix:", 0) != 0) {
      grpc::SslCredentialsOptions options;
      options.pem_root_certs = g_tls.ca;
      credentials = grpc::SslCredentials(options);
    }
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, credentials, args, std::move(interceptors));
}

}  // namespace gantry::internal
