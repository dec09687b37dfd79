// Actor concurrency (ActorOptions::max_concurrency) and cancellation (gantry::cancel,
// gantry::is_cancelled), on the embedded cluster with real worker processes of this
// executable.

#include <gantry/gantry.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

// Counts itself in `key`, then sleeps: a task that fills a CPU and says it started.
int busy(std::string key, int ms) {
  gantry::kv::add(key, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

// The side effect a cancelled task must never have.
int64_t count_run(std::string key) { return gantry::kv::add(key, 1); }

// Polls gantry::is_cancelled() for up to 20 s; says in the key-value store when it started
// and whether it returned early.
int poll_until_cancelled(std::string key) {
  gantry::kv::put(key + "/started", "1");
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (gantry::is_cancelled()) {
      gantry::kv::put(key + "/returned", "early");
      return 1;
    }
    std::this_thread::sleep_for(5ms);
  }
  gantry::kv::put(key + "/returned", "late");
  return 0;
}

// Reports its worker's pid, then sleeps without ever looking at is_cancelled().
int report_pid_and_sleep(std::string key) {
  gantry::kv::put(key, std::to_string(::getpid()));
  std::this_thread::sleep_for(60s);
  return 0;
}

int worker_pid() { return ::getpid(); }

bool cancelled_flag() { return gantry::is_cancelled(); }

// Tries to cancel a ref this worker only borrows.
std::string cancel_borrowed(std::vector<gantry::ObjectRef<int>> refs) {
  try {
    gantry::cancel(refs.at(0));
  } catch (const gantry::Error& e) {
    return e.what();
  }
  return "<no error>";
}

class Trainer {
 public:
  static Trainer* create() { return new Trainer(); }
  // {start, end} in microseconds of this worker's steady clock.
  std::vector<int64_t> timed_sleep(int ms) {
    int64_t start = now_us();
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return {start, now_us()};
  }
  // A training loop: runs until stop() or 10 s; 1 when stopped, 0 at the time limit.
  int train(std::string key) {
    gantry::kv::put(key, "running");
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!stop_.load() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    return stop_.load() ? 1 : 0;
  }
  std::string status() { return stop_.load() ? "stopping" : "training"; }
  int stop() {
    stop_ = true;
    return 0;
  }
  int64_t count(std::string key) { return gantry::kv::add(key, 1); }
  int poll(std::string key) { return poll_until_cancelled(key); }

 private:
  std::atomic<bool> stop_{false};
};

}  // namespace

GANTRY_REMOTE(sleep_ms, busy, count_run, poll_until_cancelled, report_pid_and_sleep, worker_pid, cancelled_flag,
              cancel_borrowed);
GANTRY_REMOTE(Trainer::create, &Trainer::timed_sleep, &Trainer::train, &Trainer::status, &Trainer::stop,
              &Trainer::count, &Trainer::poll);

namespace {

class Concurrency : public ::testing::Test {
 protected:
  void SetUp() override { gantry::init({.num_cpus = 4}); }
  void TearDown() override { gantry::shutdown(); }

  // An actor that has answered one call, so start-up is not timed below.
  static gantry::ActorHandle<Trainer> started_trainer(int max_concurrency) {
    auto t = gantry::actor(Trainer::create).options({.max_concurrency = max_concurrency}).remote();
    EXPECT_EQ(t.task(&Trainer::status).remote().get(), "training");
    return t;
  }

  // Runs `n` calls of `ms` each at once and returns their {start, end} and the wall time.
  static std::pair<std::vector<std::vector<int64_t>>, std::chrono::milliseconds> run_sleeps(
      const gantry::ActorHandle<Trainer>& t, int n, int ms) {
    auto start = std::chrono::steady_clock::now();
    std::vector<gantry::ObjectRef<std::vector<int64_t>>> refs;
    for (int i = 0; i < n; ++i) refs.push_back(t.task(&Trainer::timed_sleep).remote(ms));
    std::vector<std::vector<int64_t>> spans = gantry::get(refs);
    return {spans, std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start)};
  }
};

TEST_F(Concurrency, CallsOfAnActorWithMaxConcurrencyOverlap) {
  auto t = started_trainer(4);
  auto [spans, wall] = run_sleeps(t, 4, 500);
  EXPECT_LT(wall, 1500ms) << "four 500 ms calls with max_concurrency = 4 should overlap";
  int64_t last_start = 0, first_end = INT64_MAX;
  for (const auto& s : spans) {
    last_start = std::max(last_start, s[0]);
    first_end = std::min(first_end, s[1]);
  }
  EXPECT_LT(last_start, first_end) << "all four calls were running at one moment";
}

TEST_F(Concurrency, DefaultRunsCallsOneAtATimeInOrder) {
  auto t = started_trainer(1);
  auto [spans, wall] = run_sleeps(t, 4, 200);
  EXPECT_GE(wall, 800ms);
  for (size_t i = 1; i < spans.size(); ++i) {
    EXPECT_LE(spans[i - 1][1], spans[i][0]) << "call " << i << " started before call " << i - 1 << " ended";
  }
}

TEST_F(Concurrency, NoMoreThanMaxConcurrencyCallsRunAtOnce) {
  auto t = started_trainer(2);
  auto [spans, wall] = run_sleeps(t, 4, 400);
  EXPECT_GE(wall, 800ms) << "four 400 ms calls, two at a time";
  EXPECT_LT(wall, 1500ms);
  // The first two start at once; the last two wait for one of them to end.
  int64_t first_free = std::min(spans[0][1], spans[1][1]);
  EXPECT_GE(spans[2][0], first_free);
  EXPECT_GE(spans[3][0], first_free);
  // At most two overlap at any call's start.
  for (const auto& s : spans) {
    int running = 0;
    for (const auto& o : spans) running += o[0] <= s[0] && s[0] < o[1];
    EXPECT_LE(running, 2);
  }
}

TEST_F(Concurrency, LongCallDoesNotBlockShortOnes) {
  auto t = started_trainer(2);
  auto training = t.task(&Trainer::train).remote(std::string("train/state"));
  ASSERT_EQ(gantry::kv::wait("train/state", 10s), "running");
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(t.task(&Trainer::status).remote().get(2s), "training");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  EXPECT_FALSE(training.is_ready());
  EXPECT_EQ(t.task(&Trainer::stop).remote().get(2s), 0);
  EXPECT_EQ(training.get(3s), 1) << "stop() ended the training loop";
  EXPECT_EQ(t.task(&Trainer::status).remote().get(2s), "stopping");
}

TEST_F(Concurrency, MaxConcurrencyBelowOneIsRefused) {
  for (int bad : {0, -3}) {
    try {
      gantry::actor(Trainer::create).options({.max_concurrency = bad}).remote();
      ADD_FAILURE() << "max_concurrency = " << bad << " was accepted";
    } catch (const gantry::Error& e) {
      EXPECT_NE(std::string(e.what()).find("max_concurrency"), std::string::npos) << e.what();
    }
  }
}

TEST_F(Concurrency, CancelledQueuedTaskNeverRuns) {
  std::vector<gantry::ObjectRef<int>> fill;
  for (int i = 0; i < 4; ++i) fill.push_back(gantry::task(busy).remote(std::string("fill/started"), 1500));
  // All four CPUs busy: the next task waits for a worker.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (gantry::kv::get("fill/started") != "4" && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(gantry::kv::get("fill/started"), "4");
  auto queued = gantry::task(count_run).remote(std::string("queued/ran"));
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(queued.is_ready());
  gantry::cancel(queued);
  try {
    queued.get(1s);
    ADD_FAILURE() << "get of a cancelled task returned";
  } catch (const gantry::TaskCancelledError& e) {
    EXPECT_NE(std::string(e.what()).find("count_run"), std::string::npos) << e.what();
  }
  gantry::cancel(queued);  // twice changes nothing
  EXPECT_THROW(queued.get(), gantry::TaskCancelledError);
  for (auto& f : fill) EXPECT_EQ(f.get(10s), 1500);
  // Workers are free again: a task sent now runs, and the cancelled one never did.
  EXPECT_EQ(gantry::task(count_run).remote(std::string("after/ran")).get(10s), 1);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(gantry::kv::get("queued/ran"), std::nullopt);
}

TEST_F(Concurrency, RunningTaskSeesIsCancelled) {
  EXPECT_FALSE(gantry::is_cancelled()) << "false outside a task";
  EXPECT_FALSE(gantry::task(cancelled_flag).remote().get(10s)) << "false in a task nobody cancelled";
  auto r = gantry::task(poll_until_cancelled).remote(std::string("coop"));
  ASSERT_EQ(gantry::kv::wait("coop/started", 10s), "1");
  auto start = std::chrono::steady_clock::now();
  gantry::cancel(r);
  EXPECT_THROW(r.get(5s), gantry::TaskCancelledError) << "get throws even though the task returns a value";
  EXPECT_EQ(gantry::kv::wait("coop/returned", 5s), "early");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  // Its worker is free and runs the next task.
  EXPECT_EQ(gantry::task(sleep_ms).remote(1).get(10s), 1);
}

TEST_F(Concurrency, ForceCancelKillsTheWorker) {
  auto r = gantry::task(report_pid_and_sleep).remote(std::string("stuck/pid"));
  auto pid_text = gantry::kv::wait("stuck/pid", 10s);
  ASSERT_TRUE(pid_text.has_value());
  pid_t pid = std::stoi(*pid_text);
  auto start = std::chrono::steady_clock::now();
  gantry::cancel(r, {.force = true});
  try {
    r.get(5s);
    ADD_FAILURE() << "get of a force-cancelled task returned";
  } catch (const gantry::TaskCancelledError& e) {
    EXPECT_NE(std::string(e.what()).find("report_pid_and_sleep"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  bool gone = false;
  for (auto deadline = std::chrono::steady_clock::now() + 5s; std::chrono::steady_clock::now() < deadline;) {
    if (::kill(pid, 0) != 0 && errno == ESRCH) {
      gone = true;
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(gone) << "worker pid " << pid << " still exists";
  int next = gantry::task(worker_pid).remote().get(10s);
  EXPECT_NE(next, pid);
  EXPECT_THROW(r.get(), gantry::TaskCancelledError) << "not retried";
}

TEST_F(Concurrency, CancellingAFinishedTaskKeepsItsValue) {
  auto r = gantry::task(sleep_ms).remote(5);
  EXPECT_EQ(r.get(10s), 5);
  gantry::cancel(r);
  gantry::cancel(r, {.force = true});
  EXPECT_EQ(r.get(), 5);
}

TEST_F(Concurrency, CancelRefusesPutsAndBorrowedRefs) {
  auto p = gantry::put(7);
  try {
    gantry::cancel(p);
    ADD_FAILURE() << "cancel of a put was accepted";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("put"), std::string::npos) << e.what();
  }
  EXPECT_EQ(p.get(), 7);
  auto slow = gantry::task(sleep_ms).remote(2000);
  std::string refused = gantry::task(cancel_borrowed).remote(std::vector<gantry::ObjectRef<int>>{slow}).get(10s);
  EXPECT_NE(refused.find("only the process that submitted"), std::string::npos) << refused;
  EXPECT_EQ(slow.get(10s), 2000);
}

TEST_F(Concurrency, CancelledQueuedActorCallNeverRuns) {
  auto t = started_trainer(1);
  auto slow = t.task(&Trainer::timed_sleep).remote(800);
  auto queued = t.task(&Trainer::count).remote(std::string("actor/ran"));
  std::this_thread::sleep_for(200ms);  // both sent; the second waits in the actor's worker
  gantry::cancel(queued);
  try {
    queued.get(1s);
    ADD_FAILURE() << "get of a cancelled actor call returned";
  } catch (const gantry::TaskCancelledError& e) {
    EXPECT_NE(std::string(e.what()).find("count"), std::string::npos) << e.what();
  }
  EXPECT_EQ(slow.get(10s).size(), 2u);
  EXPECT_EQ(t.task(&Trainer::status).remote().get(10s), "training") << "later calls still run";
  EXPECT_EQ(gantry::kv::get("actor/ran"), std::nullopt);
}

TEST_F(Concurrency, RunningActorCallSeesIsCancelled) {
  auto t = started_trainer(2);
  auto r = t.task(&Trainer::poll).remote(std::string("actor/coop"));
  ASSERT_EQ(gantry::kv::wait("actor/coop/started", 10s), "1");
  gantry::cancel(r);
  EXPECT_THROW(r.get(5s), gantry::TaskCancelledError);
  EXPECT_EQ(gantry::kv::wait("actor/coop/returned", 5s), "early");
  EXPECT_EQ(t.task(&Trainer::status).remote().get(5s), "training");
}

TEST_F(Concurrency, ForceCancelOfAnActorCallIsRefused) {
  auto t = started_trainer(1);
  auto slow = t.task(&Trainer::timed_sleep).remote(500);
  try {
    gantry::cancel(slow, {.force = true});
    ADD_FAILURE() << "force-cancelling an actor call was accepted";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("gantry::kill"), std::string::npos) << e.what();
  }
  EXPECT_EQ(slow.get(10s).size(), 2u) << "the refused cancel changed nothing";
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
