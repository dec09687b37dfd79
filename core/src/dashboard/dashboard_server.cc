#include "dashboard/dashboard_server.h"

// cpp-httplib is included here only: no other file of gantry sees it.
#include <httplib.h>

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/logging.h"
#include "dashboard/assets.h"
#include "dashboard/cluster_source.h"
#include "dashboard/login_link.h"
#include "gantry/errors.h"

namespace gantry::internal {
namespace {

constexpr const char* kCookie = "gantry_session";
constexpr auto kSessionLifetime = std::chrono::hours(24);
constexpr int kMaxFollowers = 8;  // log streams held open at once
// GET answers of the polled views are shared by every client for this long: ten open
// pages, or one polling every 100 ms, cost what one page polling every second does. Any
// change made through the API drops them.
constexpr auto kAnswerLifetime = std::chrono::milliseconds(2000);

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// Lowers the calling thread's scheduling priority (nice 10) once. Watching a cluster must
// not slow the work it watches: on a busy node the dashboard's threads yield to the
// driver, agents and workers.
void yield_to_the_workload() {
  thread_local bool lowered = false;
  if (lowered) return;
  lowered = true;
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);  // best effort: a refusal changes nothing
}

// cpp-httplib's thread pool, whose threads run at the lowered priority.
class BackgroundPool final : public httplib::TaskQueue {
 public:
  explicit BackgroundPool(size_t threads) : pool_(threads) {}
  void enqueue(std::function<void()> fn) override {
    pool_.enqueue([fn = std::move(fn)] {
      yield_to_the_workload();
      fn();
    });
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
};

void send_json(httplib::Response& res, const Json& j, int status = 200) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, {{"error", message}}, status);
}

// The value of cookie `name` in a Cookie header, or "".
std::string cookie_value(const std::string& header, const std::string& name) {
  size_t pos = 0;
  while (pos < header.size()) {
    size_t end = header.find(';', pos);
    if (end == std::string::npos) end = header.size();
    std::string part = header.substr(pos, end - pos);
    size_t first = part.find_first_not_of(' ');
    if (first != std::string::npos) part = part.substr(first);
    if (part.rfind(name + "=", 0) == 0) return part.substr(name.size() + 1);
    pos = end + 1;
  }
  return "";
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string login_page(const std::string& message) {
  return "<!doctype html><html><head><meta charset=\"utf-8\"><title>gantry: sign in</title>"
         "<style>body{font:15px system-ui,sans-serif;margin:12vh auto;max-width:28em;color:#222}"
         "input{font:inherit;padding:.4em;width:100%;box-sizing:border-box;margin:.5em 0}"
         "button{font:inherit;padding:.4em 1.2em}.err{color:#b00020}</style></head><body>"
         "<h1>gantry dashboard</h1>"
         "<p>Paste the cluster token (the <code>token</code> file of the head's session, or run "
         "<code>gantry dashboard</code> on the head's machine for a one-time link).</p>" +
         (message.empty() ? std::string() : "<p class=\"err\">" + html_escape(message) + "</p>") +
         "<form method=\"post\" action=\"/login\"><input type=\"password\" name=\"token\" "
         "autocomplete=\"off\" autofocus placeholder=\"cluster token\"><button type=\"submit\">Sign in</button>"
         "</form></body></html>";
}

// A urlencoded form field.
std::string form_field(const std::string& body, const std::string& name) {
  httplib::Params params;
  httplib::detail::parse_query_text(body, params);
  auto it = params.find(name);
  return it == params.end() ? "" : it->second;
}

void add_security_headers(httplib::Response& res) {
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Cache-Control", "no-store");
  res.set_header("Content-Security-Policy",
                 "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'");
}

std::unique_ptr<httplib::Server> make_server(const HttpConfig& config) {
  if (config.tls_cert.empty() != config.tls_key.empty())
    throw Error("the dashboard needs both a TLS certificate and its key, or neither");
  if (config.tls_cert.empty()) return std::make_unique<httplib::Server>();
  auto server = std::make_unique<httplib::SSLServer>(config.tls_cert.c_str(), config.tls_key.c_str());
  if (!server->is_valid())
    throw Error("cannot serve HTTPS with " + config.tls_cert + " and " + config.tls_key + ": unreadable or mismatched");
  return server;
}

// Binds `server` as `config` says and serves it on `thread`. Returns the bound port.
int bind_and_serve(httplib::Server& server, const HttpConfig& config, std::thread& thread, const char* what) {
  int port = config.port;
  if (port == 0) {
    port = server.bind_to_any_port(config.host);
    if (port <= 0) throw Error(std::string("cannot bind the ") + what + " to " + config.host);
  } else if (!server.bind_to_port(config.host, port)) {
    throw Error(std::string("cannot bind the ") + what + " to " + config.host + ":" + std::to_string(port) +
                " (in use? pick another port)");
  }
  thread = std::thread([&server] {
    yield_to_the_workload();
    server.listen_after_bind();
  });
  return port;
}

std::string url_of(const HttpConfig& config, int port) {
  std::string host = config.host == "0.0.0.0" || config.host.empty() ? "127.0.0.1" : config.host;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return std::string(config.tls_cert.empty() ? "http" : "https") + "://" + host + ":" + std::to_string(port);
}

}  // namespace

class DashboardServer::Impl {
 public:
  Impl(HttpConfig config, std::string head_address)
      : config_(std::move(config)), source_(std::move(head_address)), server_(make_server(config_)) {
    server_->new_task_queue = [] { return new BackgroundPool(8); };
    server_->set_tcp_nodelay(true);  // small answers go out at once, not after a delayed ACK
    // One request per connection: cpp-httplib waits for a kept-alive connection's next
    // request by waking every few milliseconds for 5 s, which costs a busy 2-core machine
    // more (measured with gantry_microbench --dashboard-load) than a new loopback
    // connection per poll does.
    server_->set_keep_alive_max_count(1);
    routes();
  }
  ~Impl() { stop(); }

  void start() { port_ = bind_and_serve(*server_, config_, thread_, "dashboard"); }
  void stop() {
    stopping_ = true;
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  std::string url() const { return url_of(config_, port_); }

 private:
  // Whether the request carries the token or a live session.
  bool authorized(const httplib::Request& req) {
    std::string auth = req.get_header_value("Authorization");
    if (auth.rfind("Bearer ", 0) == 0 && equal_secrets(auth.substr(7), config_.token)) return true;
    std::string sid = cookie_value(req.get_header_value("Cookie"), kCookie);
    if (sid.empty()) return false;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(sid);
    if (it == sessions_.end()) return false;
    if (std::chrono::steady_clock::now() > it->second) {
      sessions_.erase(it);
      return false;
    }
    return true;
  }

  void start_session(httplib::Response& res) {
    std::string sid = random_hex(24);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto now = std::chrono::steady_clock::now();
      for (auto it = sessions_.begin(); it != sessions_.end();) it = it->second < now ? sessions_.erase(it) : std::next(it);
      sessions_[sid] = now + kSessionLifetime;
    }
    res.set_header("Set-Cookie", std::string(kCookie) + "=" + sid + "; Path=/; HttpOnly; SameSite=Strict; Max-Age=86400" +
                                     (config_.tls_cert.empty() ? "" : "; Secure"));
    res.status = 303;
    res.set_header("Location", "/");
  }

  struct Answer {
    std::chrono::steady_clock::time_point at;
    int status = 200;
    std::string body;
    std::string content_type;
  };
  enum class Kind { kView, kChange, kUncached };

  // Answers a polled view from the shared answers when one is fresh; else computes it
  // (one caller per path at a time: the others wait for it) and keeps it.
  void cached_view(const httplib::Request& req, httplib::Response& res,
                   const std::function<void(const httplib::Request&, httplib::Response&)>& handler) {
    // The path and its parameters (httplib keeps them sorted by name).
    std::string key = req.path;
    for (const auto& [name, value] : req.params) key += (key.size() == req.path.size() ? "?" : "&") + name + "=" + value;
    std::shared_ptr<std::mutex> path_mu;
    {
      std::lock_guard<std::mutex> lock(answers_mu_);
      auto& m = answer_locks_[key];
      if (!m) m = std::make_shared<std::mutex>();
      path_mu = m;
    }
    std::lock_guard<std::mutex> computing(*path_mu);
    {
      std::lock_guard<std::mutex> lock(answers_mu_);
      auto it = answers_.find(key);
      auto age = it != answers_.end() ? std::chrono::steady_clock::now() - it->second.at : kAnswerLifetime;
      if (age < kAnswerLifetime) {
        res.status = it->second.status;
        res.set_content(it->second.body, it->second.content_type);
        // HTTP's Age: how long ago this shared answer was computed, in whole seconds.
        res.set_header("Age", std::to_string(std::chrono::duration_cast<std::chrono::seconds>(age).count()));
        return;
      }
    }
    handler(req, res);
    if (res.status == -1) res.status = 200;  // cpp-httplib's "not set yet", which it answers as 200
    if (res.status != 200) return;           // errors are not kept: the next poll asks again
    std::lock_guard<std::mutex> lock(answers_mu_);
    answers_[key] = {std::chrono::steady_clock::now(), res.status, res.body, res.get_header_value("Content-Type")};
  }

  void forget_answers() {
    std::lock_guard<std::mutex> lock(answers_mu_);
    answers_.clear();
  }

  // Wraps an API handler: token check, cross-site check for changes, errors as JSON; a
  // view's answer is shared for kAnswerLifetime, a change drops the shared answers.
  httplib::Server::Handler api(std::function<void(const httplib::Request&, httplib::Response&)> handler,
                               Kind kind = Kind::kUncached) {
    return [this, handler = std::move(handler), kind](const httplib::Request& req, httplib::Response& res) {
      add_security_headers(res);
      if (!authorized(req)) return send_error(res, 401, "the cluster token is required (Authorization: Bearer TOKEN, or sign in at /login)");
      if (kind == Kind::kChange) {
        // A cookie rides along with cross-site requests; a change must come from our page.
        std::string origin = req.get_header_value("Origin");
        std::string host = req.get_header_value("Host");
        if (!origin.empty() && origin.substr(origin.find("//") == std::string::npos ? 0 : origin.find("//") + 2) != host)
          return send_error(res, 403, "cross-site request refused (Origin " + origin + ")");
      }
      try {
        if (kind == Kind::kView) {
          cached_view(req, res, handler);
        } else {
          handler(req, res);
          if (kind == Kind::kChange) forget_answers();
        }
      } catch (const ApiError& e) {
        send_error(res, e.status, e.message);
      } catch (const Json::exception& e) {
        send_error(res, 400, std::string("bad JSON: ") + e.what());
      } catch (const std::exception& e) {
        send_error(res, 500, e.what());
      }
    };
  }

  static int int_param(const httplib::Request& req, const char* name, int fallback, int low, int high) {
    if (!req.has_param(name)) return fallback;
    std::string v = req.get_param_value(name);
    try {
      size_t used = 0;
      long long n = std::stoll(v, &used);
      if (used != v.size() || n < low || n > high) throw std::out_of_range(v);
      return static_cast<int>(n);
    } catch (const std::exception&) {
      throw ApiError{400, std::string("'") + name + "' must be an integer from " + std::to_string(low) + " to " +
                              std::to_string(high) + ", not '" + v + "'"};
    }
  }

  static std::string required(const httplib::Request& req, const char* name) {
    if (!req.has_param(name) || req.get_param_value(name).empty())
      throw ApiError{400, std::string("the query parameter '") + name + "' is required"};
    return req.get_param_value(name);
  }

  void routes() {
    httplib::Server& s = *server_;
    s.Get("/", [this](const httplib::Request& req, httplib::Response& res) {
      add_security_headers(res);
      if (!authorized(req)) {
        res.status = 303;
        res.set_header("Location", "/login");
        return;
      }
      const Asset* index = find_asset("index.html");
      res.set_content(std::string(index->data, index->size), index->content_type);
    });
    s.Get(R"(/assets/([A-Za-z0-9_.-]+))", [this](const httplib::Request& req, httplib::Response& res) {
      add_security_headers(res);
      if (!authorized(req)) return send_error(res, 401, "sign in at /login");
      const Asset* a = find_asset(req.matches[1].str());
      if (a == nullptr) return send_error(res, 404, "no asset " + req.matches[1].str());
      res.set_content(std::string(a->data, a->size), a->content_type);
    });
    s.Get("/login", [this](const httplib::Request& req, httplib::Response& res) {
      add_security_headers(res);
      if (!req.has_param("link")) return res.set_content(login_page(""), "text/html; charset=utf-8");
      std::string nonce;
      int64_t expires = 0;
      bool fresh = false;
      if (check_login_link(config_.token, req.get_param_value("link"), unix_now(), &nonce, &expires)) {
        std::lock_guard<std::mutex> lock(mu_);
        int64_t now = unix_now();
        for (auto it = used_links_.begin(); it != used_links_.end();) it = it->second < now ? used_links_.erase(it) : std::next(it);
        fresh = used_links_.emplace(nonce, expires).second;
      }
      if (!fresh) {
        res.status = 401;
        return res.set_content(login_page("That login link is invalid, expired or used already: run `gantry dashboard` "
                                          "for a new one, or paste the token."),
                               "text/html; charset=utf-8");
      }
      start_session(res);
    });
    s.Post("/login", [this](const httplib::Request& req, httplib::Response& res) {
      add_security_headers(res);
      if (!equal_secrets(form_field(req.body, "token"), config_.token)) {
        res.status = 401;
        return res.set_content(login_page("That is not the cluster's token."), "text/html; charset=utf-8");
      }
      start_session(res);
    });
    s.Post("/logout", [this](const httplib::Request& req, httplib::Response& res) {
      add_security_headers(res);
      std::string sid = cookie_value(req.get_header_value("Cookie"), kCookie);
      {
        std::lock_guard<std::mutex> lock(mu_);
        sessions_.erase(sid);
      }
      res.set_header("Set-Cookie", std::string(kCookie) + "=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
      res.status = 303;
      res.set_header("Location", "/login");
    });
    s.Get("/metrics", api([this](const httplib::Request&, httplib::Response& res) {
      res.set_content(source_.metrics(), "text/plain; version=0.0.4; charset=utf-8");
    }, Kind::kView));
    s.Get("/api/cluster", api([this](auto&, auto& res) { send_json(res, source_.overview()); }, Kind::kView));
    s.Get("/api/nodes", api([this](auto&, auto& res) { send_json(res, source_.nodes()); }, Kind::kView));
    s.Get("/api/actors", api([this](const httplib::Request& req, httplib::Response& res) {
      send_json(res, source_.actors(int_param(req, "dead", kDeadActorsListed, 0, 1000000)));
    }, Kind::kView));
    s.Post(R"(/api/actors/([0-9a-f]+)/kill)", api([this](const httplib::Request& req, httplib::Response& res) {
             bool no_restart = true;
             if (!req.body.empty()) {
               Json body = Json::parse(req.body);
               if (body.contains("no_restart")) no_restart = body["no_restart"].get<bool>();
             }
             source_.kill_actor(req.matches[1].str(), no_restart);
             send_json(res, {{"killed", req.matches[1].str()}, {"no_restart", no_restart}});
           }, Kind::kChange));
    s.Get("/api/tasks", api([this](auto&, auto& res) { send_json(res, source_.tasks()); }, Kind::kView));
    s.Get("/api/objects", api([this](auto&, auto& res) { send_json(res, source_.objects()); }, Kind::kView));
    s.Get("/api/placement_groups", api([this](auto&, auto& res) { send_json(res, source_.placement_groups()); }, Kind::kView));
    s.Get("/api/jobs", api([this](auto&, auto& res) { send_json(res, source_.jobs()); }, Kind::kView));
    s.Post("/api/jobs", api([this](const httplib::Request& req, httplib::Response& res) {
             send_json(res, source_.submit_job(Json::parse(req.body.empty() ? "null" : req.body)), 201);
           }, Kind::kChange));
    s.Get(R"(/api/jobs/([A-Za-z0-9_-]+))", api([this](const httplib::Request& req, httplib::Response& res) {
            send_json(res, source_.job(req.matches[1].str()));
          }));
    s.Get(R"(/api/jobs/([A-Za-z0-9_-]+)/logs)", api([this](const httplib::Request& req, httplib::Response& res) {
            send_json(res, source_.job_logs(req.matches[1].str(),
                                            static_cast<uint64_t>(int_param(req, "offset", 0, 0, 2147483647))));
          }));
    s.Post(R"(/api/jobs/([A-Za-z0-9_-]+)/stop)", api([this](const httplib::Request& req, httplib::Response& res) {
             send_json(res, source_.stop_job(req.matches[1].str()));
           }, Kind::kChange));
    s.Get("/api/logs", api([this](const httplib::Request& req, httplib::Response& res) { logs(req, res); }));
    s.Get("/api/stacks", api([this](const httplib::Request& req, httplib::Response& res) {
            send_json(res, source_.stacks(required(req, "node"), int_param(req, "pid", 0, 1, 1 << 30)));
          }));
    s.Get("/api/timeline", api([this](auto&, auto& res) { send_json(res, source_.timeline()); }));
    s.Get("/api/train", api([this](auto&, auto& res) { send_json(res, source_.train_runs()); }, Kind::kView));
    s.Get(R"(/api/train/([^/]+))", api([this](const httplib::Request& req, httplib::Response& res) {
            send_json(res, source_.train_run(req.matches[1].str()));
          }, Kind::kView));
    s.Get("/api/tune", api([this](auto&, auto& res) { send_json(res, source_.tune_experiments()); }, Kind::kView));
    s.Get(R"(/api/tune/([^/]+))", api([this](const httplib::Request& req, httplib::Response& res) {
            send_json(res, source_.tune_experiment(req.matches[1].str()));
          }, Kind::kView));
    s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (res.body.empty() && res.status == 404) send_error(res, 404, "no such endpoint: " + req.method + " " + req.path);
    });
  }

  void logs(const httplib::Request& req, httplib::Response& res) {
    std::string node = required(req, "node");
    std::string file = req.has_param("file")     ? req.get_param_value("file")
                       : req.has_param("worker") ? "worker-" + std::to_string(int_param(req, "worker", 0, 1, 1 << 30)) + ".out"
                                                 : "";
    if (file.empty()) return send_json(res, source_.log_files(node));
    int tail = int_param(req, "tail", 1000, 1, 100000);
    int64_t offset = req.has_param("offset") ? int_param(req, "offset", 0, 0, 2147483647) : -1;
    Json first = source_.read_log(node, file, offset, tail);
    if (!req.has_param("follow") || req.get_param_value("follow") == "0") return send_json(res, first);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (followers_ >= kMaxFollowers) throw ApiError{503, "too many log streams open; close one or poll with offset"};
      ++followers_;
    }
    // Server-sent events: the first chunk, then whatever the file gains, every 500 ms.
    auto next = std::make_shared<uint64_t>(first["next_offset"].get<uint64_t>());
    auto pending = std::make_shared<std::string>("data: " + dump(first) + "\n\n");
    res.set_header("Cache-Control", "no-store");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, node, file, next, pending](size_t, httplib::DataSink& sink) {
          if (!pending->empty()) {
            bool ok = sink.write(pending->data(), pending->size());
            pending->clear();
            return ok;
          }
          for (int i = 0; i < 5 && !stopping_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
          if (stopping_ || !sink.is_writable()) return false;
          try {
            Json chunk = source_.read_log(node, file, static_cast<int64_t>(*next), 0);
            *next = chunk["next_offset"].get<uint64_t>();
            std::string event = chunk["text"].get<std::string>().empty() ? ": keep-alive\n\n" : "data: " + dump(chunk) + "\n\n";
            return sink.write(event.data(), event.size());
          } catch (const ApiError& e) {
            std::string event = "event: error\ndata: " + dump(Json{{"error", e.message}}) + "\n\n";
            sink.write(event.data(), event.size());
            return false;
          }
        },
        [this](bool) {
          std::lock_guard<std::mutex> lock(mu_);
          --followers_;
        });
  }

  HttpConfig config_;
  ClusterSource source_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::mutex answers_mu_;  // guards answers_, answer_locks_
  std::map<std::string, Answer> answers_;                          // path -> shared answer
  std::map<std::string, std::shared_ptr<std::mutex>> answer_locks_;  // path -> held while computing it
  std::mutex mu_;  // guards sessions_, used_links_, followers_
  std::map<std::string, std::chrono::steady_clock::time_point> sessions_;  // session id -> expiry
  std::map<std::string, int64_t> used_links_;                               // login link nonce -> expiry
  int followers_ = 0;
};

DashboardServer::DashboardServer(HttpConfig config, std::string head_address)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(head_address))) {}
DashboardServer::~DashboardServer() = default;
void DashboardServer::start() { impl_->start(); }
void DashboardServer::stop() { impl_->stop(); }
int DashboardServer::port() const { return impl_->port(); }
std::string DashboardServer::url() const { return impl_->url(); }

class MetricsServer::Impl {
 public:
  Impl(HttpConfig config, std::function<std::string()> metrics)
      : config_(std::move(config)), metrics_(std::move(metrics)), server_(make_server(config_)) {
    server_->new_task_queue = [] { return new BackgroundPool(2); };
    server_->set_tcp_nodelay(true);
    server_->set_keep_alive_max_count(1);  // as the dashboard's: no idle keep-alive polling
    server_->Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      std::string auth = req.get_header_value("Authorization");
      if (auth.rfind("Bearer ", 0) != 0 || !equal_secrets(auth.substr(7), config_.token))
        return send_error(res, 401, "the cluster token is required (Authorization: Bearer TOKEN)");
      try {
        res.set_content(metrics_(), "text/plain; version=0.0.4; charset=utf-8");
      } catch (const std::exception& e) {
        send_error(res, 500, e.what());
      }
    });
  }
  ~Impl() { stop(); }
  void start() { port_ = bind_and_serve(*server_, config_, thread_, "metrics endpoint"); }
  void stop() {
    server_->stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  std::string url() const { return url_of(config_, port_); }

 private:
  HttpConfig config_;
  std::function<std::string()> metrics_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

MetricsServer::MetricsServer(HttpConfig config, std::function<std::string()> metrics)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(metrics))) {}
MetricsServer::~MetricsServer() = default;
void MetricsServer::start() { impl_->start(); }
void MetricsServer::stop() { impl_->stop(); }
int MetricsServer::port() const { return impl_->port(); }
std::string MetricsServer::url() const { return impl_->url(); }

}  // namespace gantry::internal
