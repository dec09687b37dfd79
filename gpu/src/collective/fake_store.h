#pragma once

#include <condition_variable>
#include <map>
#include <mutex>

#include "collective/backend.h"

namespace gantry::collective::detail {

/// An in-process Store for unit tests whose ranks are threads of one process. Share one
/// instance among the ranks' BackendContexts.
class FakeStore final : public Store {
 public:
  void set(const std::string& key, const std::string& value) override {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = value;
    cv_.notify_all();
  }
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return values_.count(key) > 0; }))
      throw CollectiveError("fake store: key '" + key + "' not set within the timeout");
    return values_[key];
  }
  int64_t add(const std::string& key, int64_t delta) override {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t value = counters_[key] += delta;
    cv_.notify_all();
    return value;
  }

 private:
  std::mutex mu_;  // guards values_, counters_
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
  std::map<std::string, int64_t> counters_;
};

}  // namespace gantry::collective::detail
