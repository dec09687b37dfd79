#include "dashboard_poller.h"

#include <httplib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <regex>
#include <stdexcept>

DashboardPoller::DashboardPoller(const std::string& login_url, std::chrono::milliseconds period) : period_(period) {
  std::smatch m;
  if (!std::regex_search(login_url, m, std::regex("^http://([^:/]+):(\\d+)(/login\\?link=\\S+)$")))
    throw std::runtime_error("not a dashboard login link: '" + login_url + "'");
  host_ = m[1].str();
  port_ = std::stoi(m[2].str());
  httplib::Client client(host_, port_);
  auto r = client.Get(m[3].str().c_str());
  if (!r || r->status != 303) throw std::runtime_error("the dashboard refused its login link");
  std::string set_cookie = r->get_header_value("Set-Cookie");
  cookie_ = set_cookie.substr(0, set_cookie.find(';'));
}

DashboardPoller::~DashboardPoller() { stop(); }

void DashboardPoller::start() {
  running_ = true;
  thread_ = std::thread([this] { loop(); });
}

long DashboardPoller::stop() {
  running_ = false;
  if (thread_.joinable()) thread_.join();
  return requests_.load();
}

double DashboardPoller::median_ms() const {
  if (latencies_ms_.empty()) return 0;
  std::vector<double> sorted = latencies_ms_;
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(sorted.size() / 2), sorted.end());
  return sorted[sorted.size() / 2];
}

double DashboardPoller::max_ms() const {
  return latencies_ms_.empty() ? 0 : *std::max_element(latencies_ms_.begin(), latencies_ms_.end());
}

void DashboardPoller::loop() {
  // This client stands in for a browser, which would run on the user's machine rather than
  // on the node it watches: at nice 10, it yields to the benchmark's work.
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10);  // best effort
  httplib::Client client(host_, port_);
  client.set_keep_alive(true);
  const httplib::Headers headers = {{"Cookie", cookie_}};
  auto next = std::chrono::steady_clock::now();
  static constexpr const char* kPaths[] = {"/api/cluster", "/api/nodes", "/api/actors", "/api/tasks", "/metrics"};
  for (size_t i = 0; running_; ++i) {
    const char* path = kPaths[i % std::size(kPaths)];
    auto sent = std::chrono::steady_clock::now();
    auto r = client.Get(path, headers);
    latencies_ms_.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sent).count());
    ++requests_;
    if (!r || r->status != 200) {
      ++failures_;
      // The first few say why; a run of failures is then counted only.
      if (failures_ <= 3) {
        std::string why = r ? std::to_string(r->status) + " " + r->body.substr(0, 200) : httplib::to_string(r.error());
        std::fprintf(stderr, "dashboard poll %s failed: %s\n", path, why.c_str());
      }
    }
    next += period_;
    std::this_thread::sleep_until(next);
  }
  timespec cpu{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
  cpu_seconds_ = static_cast<double>(cpu.tv_sec) + static_cast<double>(cpu.tv_nsec) / 1e9;
}
