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

DashboardPoller::DashboardPoller(const std::string& login_url, std::chrono::milliseconds period,
                                 std::vector<std::string> paths)
    : paths_(std::move(paths)), period_(period) {
  if (paths_.empty()) throw std::invalid_argument("a dashboard poller needs at least one path to ask");
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

void DashboardPoller::start(bool polling) {
  polling_ = polling;
  running_ = true;
  thread_ = std::thread([this] { loop(); });
}

void DashboardPoller::set_polling(bool polling) {
  std::unique_lock<std::mutex> lock(mu_);
  polling_ = polling;
  changed_.notify_all();
  if (!polling) changed_.wait(lock, [this] { return !in_request_; });
}

long DashboardPoller::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = false;
    changed_.notify_all();
  }
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
  for (size_t i = 0;; ++i) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!polling_) {
        changed_.wait(lock, [this] { return polling_ || !running_; });
        next = std::chrono::steady_clock::now();  // a resumed poller asks at once
      }
      if (!running_) break;
      in_request_ = true;
    }
    const char* path = paths_[i % paths_.size()].c_str();
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
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_request_ = false;
    }
    changed_.notify_all();
    next += period_;
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait_until(lock, next, [this] { return !polling_ || !running_; });
  }
  timespec cpu{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
  cpu_seconds_ = static_cast<double>(cpu.tv_sec) + static_cast<double>(cpu.tv_nsec) / 1e9;
}
