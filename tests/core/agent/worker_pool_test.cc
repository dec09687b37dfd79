#include "agent/worker_pool.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

namespace gantry::internal {
namespace {

using namespace std::chrono_literals;

// The exits a pool reports, by worker id, with a wait for a number of them.
class Exits {
 public:
  WorkerPool::ExitCallback callback() {
    return [this](const UniqueId& id, pid_t, const std::string& reason) {
      std::lock_guard<std::mutex> lock(mu_);
      reasons_[id] = reason;
      changed_.notify_all();
    };
  }
  // True once `n` exits were reported, false after 10 s.
  bool wait_for(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, 10s, [&] { return reasons_.size() >= n; });
  }
  std::string reason(const UniqueId& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = reasons_.find(id);
    return it == reasons_.end() ? "<not reported>" : it->second;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  std::map<UniqueId, std::string> reasons_;
};

WorkerLaunchSpec shell(const std::string& script) { return {"/bin/sh", {"sh", "-c", script}, {}}; }

TEST(WorkerPool, ReportsEachExitWithHowItEnded) {
  Exits exits;
  WorkerPool pool({}, exits.callback());
  UniqueId exited = pool.start(shell("exit 3"), {});
  UniqueId killed = pool.start(shell("kill -KILL $$"), {});
  UniqueId sleeping = pool.start(shell("exec sleep 30"), {});
  ASSERT_TRUE(exits.wait_for(2)) << "the two short workers' exits were not reported";
  pool.signal(sleeping, SIGTERM);
  ASSERT_TRUE(exits.wait_for(3)) << "a terminated worker's exit was not reported";
  EXPECT_EQ(exits.reason(exited), "exit code 3");
  EXPECT_EQ(exits.reason(killed), "killed by signal 9 (SIGKILL)");
  EXPECT_EQ(exits.reason(sleeping), "killed by signal 15 (SIGTERM)");
  EXPECT_EQ(pool.num_running(), 0u);
}

// Workers that exit at once, some perhaps before the monitor has looked at them, and one
// started long after the monitor went to sleep: none is missed.
TEST(WorkerPool, MissesNoExitHoweverSoonOrLate) {
  Exits exits;
  WorkerPool pool({}, exits.callback());
  constexpr size_t kQuick = 20;
  for (size_t i = 0; i < kQuick; ++i) pool.start(shell("exit 0"), {});
  ASSERT_TRUE(exits.wait_for(kQuick));
  std::this_thread::sleep_for(1500ms);  // past the monitor's safety-net timeout
  UniqueId late = pool.start(shell("exit 7"), {});
  auto started = std::chrono::steady_clock::now();
  ASSERT_TRUE(exits.wait_for(kQuick + 1));
  EXPECT_EQ(exits.reason(late), "exit code 7");
  // Not a speed figure: a monitor that only looked every second would still pass above.
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
  EXPECT_EQ(pool.num_running(), 0u);
}

TEST(WorkerPool, StopsItsWorkersWhenDestroyed) {
  Exits exits;
  pid_t pid = 0;
  {
    WorkerPool pool({}, [&](const UniqueId& id, pid_t p, const std::string& reason) {
      pid = p;
      exits.callback()(id, p, reason);
    });
    pool.start(shell("exec sleep 30"), {});
    EXPECT_EQ(pool.num_running(), 1u);
  }
  ASSERT_TRUE(exits.wait_for(1)) << "destroying the pool did not end its worker";
  EXPECT_EQ(::kill(pid, 0), -1) << "the worker is still there";
}

}  // namespace
}  // namespace gantry::internal
