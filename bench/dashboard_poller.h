#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

/// Polls a dashboard as a page would, every `period`: one request each time, in turn to
/// each of `paths` (by default the polled views /api/cluster, /api/nodes, /api/actors,
/// /api/tasks and /metrics, so every view is computed while the figures run). Signs in once with a one-time login link
/// (`gantry::dashboard_login_url()`). Its thread runs at nice 10, as a stand-in for a
/// browser on another machine. For the microbenchmark's
/// --dashboard-load: the figures with and without a dashboard being watched.
class DashboardPoller {
 public:
  static inline const std::vector<std::string> kViews = {"/api/cluster", "/api/nodes", "/api/actors", "/api/tasks",
                                                        "/metrics"};
  DashboardPoller(const std::string& login_url, std::chrono::milliseconds period,
                  std::vector<std::string> paths = kViews);
  ~DashboardPoller();
  /// Starts the polling thread, polling at once unless `polling` is false.
  void start(bool polling = true);
  /// Resumes (true) or pauses (false) polling without ending the thread. Pausing waits
  /// for a request under way, so no work the dashboard does for this client falls after
  /// the call returns.
  void set_polling(bool polling);
  /// Stops polling; returns how many requests were made.
  long stop();
  long failures() const { return failures_.load(); }
  /// Request latencies in milliseconds after stop(): the median and the slowest.
  double median_ms() const;
  double max_ms() const;
  /// CPU seconds the polling thread itself used (the client's side, as a browser's would
  /// be), after stop().
  double cpu_seconds() const { return cpu_seconds_; }

 private:
  void loop();
  std::string host_;
  int port_ = 0;
  std::string cookie_;
  std::vector<std::string> paths_;
  std::chrono::milliseconds period_;
  std::mutex mu_;
  std::condition_variable changed_;
  bool polling_ = false;     // guarded by mu_
  bool in_request_ = false;  // likewise
  std::atomic<bool> running_{false};
  std::atomic<long> requests_{0};
  std::atomic<long> failures_{0};
  std::thread thread_;
  std::vector<double> latencies_ms_;  // written by the polling thread, read after stop()
  double cpu_seconds_ = 0;            // likewise
};
