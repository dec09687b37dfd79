#pragma once

#include <functional>
#include <memory>
#include <string>

namespace gantry::internal {

class ClusterSource;

/// Where and how an HTTP endpoint of gantry serves.
struct HttpConfig {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8265;                 // 0: a free port (port() names it)
  std::string token;               // the cluster token every request must carry
  std::string tls_cert;            // PEM files: HTTPS when both are set
  std::string tls_key;
};

/// The head's dashboard: the single-page app, the JSON API under /api/ and Prometheus
/// /metrics, over cpp-httplib (see docs/architecture.md for why). Every request needs the
/// cluster token, as `Authorization: Bearer TOKEN` or the HttpOnly session cookie the
/// login page sets (from the token typed once, or a one-time link from
/// `gantry dashboard`); others get 401 and change nothing. Requests run on the server's
/// thread pool; the API gathers through `source` (thread-safe).
class DashboardServer {
 public:
  DashboardServer(HttpConfig config, std::string head_address);
  ~DashboardServer();
  DashboardServer(const DashboardServer&) = delete;
  DashboardServer& operator=(const DashboardServer&) = delete;

  /// Binds and starts serving on a thread of its own. Throws gantry::Error when the
  /// address cannot be bound (port in use) or the TLS files cannot be read.
  void start();
  /// Stops serving and waits for requests in flight. Idempotent.
  void stop();
  int port() const;
  /// "http://127.0.0.1:8265" (https with TLS).
  std::string url() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

/// An agent's Prometheus endpoint (`gantry start --metrics-port`): GET /metrics only, with
/// the same token rule. `metrics` makes the page; it runs on the server's threads.
class MetricsServer {
 public:
  MetricsServer(HttpConfig config, std::function<std::string()> metrics);
  ~MetricsServer();
  void start();
  void stop();
  int port() const;
  std::string url() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gantry::internal
