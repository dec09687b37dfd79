// Integration tests: each test starts the embedded cluster (head, node agent and real
// worker processes of this very executable) and exercises the public API.

#include <gantry/gantry.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>
#include <thread>

using namespace std::chrono_literals;

namespace {

int64_t fibonacci(int n) { return n < 2 ? n : fibonacci(n - 1) + fibonacci(n - 2); }

std::vector<double> zeros(int n) { return std::vector<double>(static_cast<size_t>(n), 0.0); }
std::vector<double> ones(int n) { return std::vector<double>(static_cast<size_t>(n), 1.0); }
double dot(std::vector<double> a, std::vector<double> b) {
  return std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
}
double total(std::vector<double> v) { return std::accumulate(v.begin(), v.end(), 0.0); }

int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

int throws_invalid_argument(int x) { throw std::invalid_argument("bad x = " + std::to_string(x)); }

// Kills its own worker with SIGKILL the first time (per marker file), then succeeds.
int die_once(std::string marker) {
  if (!std::filesystem::exists(marker)) {
    std::ofstream(marker) << ::getpid();
    ::raise(SIGKILL);
  }
  return ::getpid();
}

// A barrier on files: waits (up to 20 s) until `n` calls have arrived in `dir`; returns
// how long it waited in ms, or -1 when the others never came.
int64_t file_barrier(std::string dir, int n) {
  auto start = std::chrono::steady_clock::now();
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + std::to_string(::getpid()) + "-" + std::to_string(start.time_since_epoch().count())) << "here";
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(20)) {
    int arrived = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++arrived;
    if (arrived >= n)
      return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return -1;
}

int die_always() {
  ::raise(SIGKILL);
  return 0;
}

struct GpuView {
  std::vector<int> ids;
  std::string visible;
  int64_t start_us = 0;
  int64_t end_us = 0;
  GANTRY_FIELDS(ids, visible, start_us, end_us);
};

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

GpuView gpu_view(int hold_ms) {
  GpuView v;
  v.start_us = now_us();
  v.ids = gantry::get_gpu_ids();
  const char* env = std::getenv("CUDA_VISIBLE_DEVICES");
  v.visible = env == nullptr ? "<unset>" : env;
  std::this_thread::sleep_for(std::chrono::milliseconds(hold_ms));
  v.end_us = now_us();
  return v;
}

struct Context {
  std::string node_id, worker_id, job_id, task_id, function, session_dir;
  int pid = 0;
  bool is_driver = true;
  std::map<std::string, double> resources;
  GANTRY_FIELDS(node_id, worker_id, job_id, task_id, function, session_dir, pid, is_driver, resources);
};

Context context_task() {
  auto c = gantry::runtime_context();
  return {c.node_id, c.worker_id, c.job_id, c.task_id, c.function, c.session_dir, c.pid, c.is_driver,
          c.assigned_resources};
}

int say_hello(std::string marker) {
  std::cout << "hello " << marker << std::endl;
  std::cerr << "err " << marker << std::endl;
  return 1;
}

// Nested tasks: a task that submits tasks and waits for them (its CPU is lent back).
int64_t fan_out(int n) {
  std::vector<gantry::ObjectRef<int64_t>> refs;
  for (int i = 0; i < n; ++i) refs.push_back(gantry::task(fibonacci).remote(10));
  int64_t sum = 0;
  for (auto v : gantry::get(refs)) sum += v;
  return sum;
}

// Nested references: the driver passes refs inside a vector; the task borrows them.
double sum_nested(std::vector<gantry::ObjectRef<std::vector<double>>> refs) {
  double s = 0;
  for (const auto& r : refs) s += total(r.get());
  return s;
}

// Returned references: a task hands back refs to objects it created (it owns them).
gantry::ObjectRef<std::vector<double>> make_inner(int n) { return gantry::put(ones(n)); }
std::vector<gantry::ObjectRef<int64_t>> spawn_children(int n) {
  std::vector<gantry::ObjectRef<int64_t>> refs;
  for (int i = 0; i < n; ++i) refs.push_back(gantry::task(fibonacci).remote(i));
  return refs;
}
std::vector<gantry::ObjectRef<std::vector<double>>> make_inner_list(int n, int count) {
  std::vector<gantry::ObjectRef<std::vector<double>>> refs;
  for (int i = 0; i < count; ++i) refs.push_back(gantry::put(ones(n)));
  return refs;
}

class Counter {
 public:
  static Counter* create(int start) { return new Counter(start); }
  explicit Counter(int start) : value_(start) {}
  int increment() { return ++value_; }
  int value() const { return value_; }
  int pid() const { return ::getpid(); }
  int add(int x) { return value_ += x; }
  int fail() { throw std::runtime_error("counter refuses"); }
  std::string payload(int n) const { return std::string(static_cast<size_t>(n), 'x'); }
  // Borrowing: the actor keeps a reference it was given and reads it later.
  int hold(std::vector<gantry::ObjectRef<std::vector<double>>> refs) {
    held_ = std::move(refs);
    return static_cast<int>(held_.size());
  }
  double sum_held() const {
    double s = 0;
    for (const auto& r : held_) s += total(r.get());
    return s;
  }
  int release() {
    held_.clear();
    return 0;
  }

 private:
  int value_;
  std::vector<gantry::ObjectRef<std::vector<double>>> held_;
};

class Failing {
 public:
  static Failing* create() { throw std::logic_error("factory says no"); }
  int ping() { return 1; }
};

int bump(gantry::ActorHandle<Counter> c, int n) {
  int last = 0;
  for (int i = 0; i < n; ++i) last = c.task(&Counter::increment).remote().get();
  return last;
}

int not_registered(int x) { return x; }

}  // namespace

GANTRY_REMOTE(fibonacci, zeros, ones, dot, total, sleep_ms, throws_invalid_argument, die_once, die_always);
GANTRY_REMOTE(file_barrier);
GANTRY_REMOTE(gpu_view, context_task, say_hello, fan_out, sum_nested, bump);
GANTRY_REMOTE(make_inner, spawn_children, make_inner_list);
GANTRY_REMOTE(Counter::create, &Counter::increment, &Counter::value, &Counter::pid, &Counter::add, &Counter::fail, &Counter::payload,
              &Counter::hold, &Counter::sum_held, &Counter::release);
GANTRY_REMOTE(Failing::create, &Failing::ping);

namespace {

class Runtime : public ::testing::Test {
 protected:
  void start(gantry::InitOptions options = {}) {
    if (options.num_cpus < 0) options.num_cpus = 2;
    gantry::init(options);
  }
  void TearDown() override { gantry::shutdown(); }
};

TEST_F(Runtime, TaskResultsComeBackInOrder) {
  start();
  auto r = gantry::task(fibonacci).remote(20);
  EXPECT_EQ(r.get(), 6765);
  EXPECT_EQ(gantry::get(r), 6765);
  std::vector<gantry::ObjectRef<int64_t>> refs;
  for (int i = 0; i < 30; ++i) refs.push_back(gantry::task(fibonacci).remote(i));
  auto values = gantry::get(refs);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(values[i], fibonacci(i));
}

TEST_F(Runtime, ObjectRefArgumentsChainWithoutTheDriver) {
  start();
  auto a = gantry::task(ones).remote(1000);
  auto b = gantry::task(ones).remote(1000);
  EXPECT_DOUBLE_EQ(gantry::task(dot).remote(a, b).get(), 1000.0);
  // Large intermediate values pass through the shared-memory store.
  auto big = gantry::task(ones).remote(1 << 20);
  EXPECT_DOUBLE_EQ(gantry::task(total).remote(big).get(), double(1 << 20));
}

TEST_F(Runtime, PutAndGetSmallAndLargeValues) {
  start();
  auto small = gantry::put(std::string("hello"));
  EXPECT_EQ(small.get(), "hello");
  std::vector<double> v(1 << 22);
  std::iota(v.begin(), v.end(), 0.0);
  auto big = gantry::put(v);
  EXPECT_EQ(big.get(), v);
  EXPECT_DOUBLE_EQ(gantry::task(total).remote(big).get(), std::accumulate(v.begin(), v.end(), 0.0));
}

TEST_F(Runtime, WaitSplitsReadyFromPending) {
  start();
  std::vector<gantry::ObjectRef<int>> refs{gantry::task(sleep_ms).remote(0), gantry::task(sleep_ms).remote(3000)};
  auto [ready, pending] = gantry::wait(refs, 1, 2000ms);
  ASSERT_EQ(ready.size(), 1u);
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(ready[0].get(), 0);
  auto all = gantry::wait(refs, 2, 100ms);
  EXPECT_EQ(all.ready.size(), 1u) << "the slow task cannot be done yet";
}

TEST_F(Runtime, GetWithTimeoutThrowsGetTimeoutError) {
  start();
  auto r = gantry::task(sleep_ms).remote(2000);
  EXPECT_THROW(r.get(100ms), gantry::GetTimeoutError);
  EXPECT_EQ(r.get(10s), 2000);
}

TEST_F(Runtime, UserExceptionsCarryTypeMessageFunctionAndNode) {
  start();
  auto r = gantry::task(throws_invalid_argument).remote(7);
  try {
    r.get();
    FAIL() << "expected TaskError";
  } catch (const gantry::TaskError& e) {
    EXPECT_EQ(e.remote_type(), "std::invalid_argument");
    EXPECT_EQ(e.remote_message(), "bad x = 7");
    EXPECT_EQ(e.function(), "throws_invalid_argument");
    EXPECT_EQ(e.node(), gantry::runtime_context().node_id);
    EXPECT_NE(e.pid(), ::getpid());
    EXPECT_NE(std::string(e.what()).find("bad x = 7"), std::string::npos);
  }
  // TaskOptions::name stands in for the function in errors and logs.
  try {
    gantry::task(throws_invalid_argument).options({.name = "step-3"}).remote(1).get();
    FAIL();
  } catch (const gantry::TaskError& e) {
    EXPECT_EQ(e.function(), "step-3");
  }
  // A task whose argument failed fails with the same error, without running.
  auto chained = gantry::task(fibonacci).options({.max_retries = 0}).remote(gantry::task(throws_invalid_argument).remote(1));
  EXPECT_THROW(chained.get(), gantry::TaskError);
}

TEST_F(Runtime, KilledWorkerMidTaskIsRetriedOnAFreshWorker) {
  start();
  std::string marker = std::filesystem::temp_directory_path() / ("gantry_die_once_" + std::to_string(::getpid()));
  std::filesystem::remove(marker);
  int pid = gantry::task(die_once).options({.max_retries = 2}).remote(marker).get(60s);
  std::ifstream in(marker);
  int first_pid = 0;
  in >> first_pid;
  EXPECT_NE(pid, first_pid) << "the retry ran in a fresh worker";
  EXPECT_NE(first_pid, 0);
  std::filesystem::remove(marker);
}

TEST_F(Runtime, RetriesExhaustedThrowWorkerCrashedError) {
  start();
  auto r = gantry::task(die_always).options({.max_retries = 1}).remote();
  try {
    r.get(60s);
    FAIL() << "expected WorkerCrashedError";
  } catch (const gantry::WorkerCrashedError& e) {
    EXPECT_NE(std::string(e.what()).find("die_always"), std::string::npos) << e.what();
  }
  // The cluster keeps working.
  EXPECT_EQ(gantry::task(fibonacci).remote(10).get(), 55);
}

TEST_F(Runtime, InfeasibleRequestsFailAtOnce) {
  start({.num_cpus = 2, .num_gpus = 2});
  auto t0 = std::chrono::steady_clock::now();
  auto r = gantry::task(fibonacci).options({.num_gpus = 3}).remote(1);
  EXPECT_THROW(r.get(10s), gantry::InfeasibleError);
  EXPECT_THROW(gantry::task(fibonacci).options({.resources = {{"TPU", 1}}}).remote(1).get(10s),
               gantry::InfeasibleError);
  EXPECT_THROW(gantry::actor(Counter::create).options({.num_gpus = 3}).remote(0), gantry::InfeasibleError);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_THROW(gantry::task(fibonacci).options({.num_cpus = -1}).remote(1), gantry::Error);
}

TEST_F(Runtime, GpuIdsAreDisjointUnderConcurrencyAndFractionsPack) {
  start({.num_cpus = 4, .num_gpus = 4});
  std::vector<gantry::ObjectRef<GpuView>> whole;
  for (int i = 0; i < 8; ++i) whole.push_back(gantry::task(gpu_view).options({.num_cpus = 0, .num_gpus = 1}).remote(300));
  auto views = gantry::get(whole);
  for (size_t i = 0; i < views.size(); ++i) {
    ASSERT_EQ(views[i].ids.size(), 1u);
    EXPECT_EQ(views[i].visible, std::to_string(views[i].ids[0]));
    for (size_t j = 0; j < i; ++j) {
      bool overlap = views[i].start_us < views[j].end_us && views[j].start_us < views[i].end_us;
      if (overlap) {
        EXPECT_NE(views[i].ids, views[j].ids) << "tasks " << i << " and " << j << " ran at once";
      }
    }
  }
  // Four half-GPU tasks at once fill two devices, two each.
  std::vector<gantry::ObjectRef<GpuView>> halves;
  for (int i = 0; i < 4; ++i) halves.push_back(gantry::task(gpu_view).options({.num_cpus = 0, .num_gpus = 0.5}).remote(500));
  // At no moment may more than two halves share a device.
  auto half_views = gantry::get(halves);
  for (const auto& v : half_views) {
    ASSERT_EQ(v.ids.size(), 1u);
    int sharing = 0;
    for (const auto& w : half_views)
      sharing += w.ids == v.ids && w.start_us <= v.start_us && v.start_us < w.end_us;
    EXPECT_LE(sharing, 2) << "device " << v.ids[0] << " over-packed";
  }
  // No GPU asked, none seen.
  auto none = gantry::task(gpu_view).remote(0).get();
  EXPECT_TRUE(none.ids.empty());
  EXPECT_EQ(none.visible, "");
  // Two-GPU tasks get two devices.
  auto two = gantry::task(gpu_view).options({.num_gpus = 2}).remote(0).get();
  EXPECT_EQ(two.ids.size(), 2u);
}

TEST_F(Runtime, PlacementGroupsReserveBundlesAndWorkRunsInThem) {
  start({.num_cpus = 4, .num_gpus = 4});
  using gantry::SchedulingStrategy;
  auto pg = gantry::create_placement_group({.bundles = {{{"CPU", 1}, {"GPU", 2}}, {{"CPU", 1}, {"GPU", 1}}},
                                            .strategy = gantry::PlacementStrategy::kStrictPack,
                                            .name = "training"});
  ASSERT_TRUE(pg.wait(20s));
  EXPECT_EQ(pg.id().size(), 32u);
  auto found = gantry::get_placement_group("training");
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->id(), pg.id());
  EXPECT_EQ(found->bundles().size(), 2u);

  // Work in a bundle gets that bundle's devices; work outside gets what is left.
  auto in0 = gantry::task(gpu_view).options({.num_cpus = 1, .num_gpus = 2,
                                             .scheduling = SchedulingStrategy::placement_group(pg, 0)}).remote(0).get(20s);
  auto in1 = gantry::task(gpu_view).options({.num_cpus = 1, .num_gpus = 1,
                                             .scheduling = SchedulingStrategy::placement_group(pg, 1)}).remote(0).get(20s);
  auto outside = gantry::task(gpu_view).options({.num_cpus = 1, .num_gpus = 1}).remote(0).get(20s);
  ASSERT_EQ(in0.ids.size(), 2u);
  ASSERT_EQ(in1.ids.size(), 1u);
  ASSERT_EQ(outside.ids.size(), 1u);
  std::set<int> all{in0.ids[0], in0.ids[1], in1.ids[0], outside.ids[0]};
  EXPECT_EQ(all.size(), 4u) << "bundle devices overlap each other or the rest of the node";
  // Any bundle with room, when no index is given.
  auto any = gantry::task(gpu_view).options({.num_cpus = 1, .num_gpus = 1,
                                             .scheduling = SchedulingStrategy::placement_group(pg)}).remote(0).get(20s);
  ASSERT_EQ(any.ids.size(), 1u);
  EXPECT_TRUE(any.ids[0] != outside.ids[0]);

  // More than a bundle holds, a bundle that does not exist: InfeasibleError, at once.
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(gantry::task(gpu_view).options({.num_cpus = 1, .num_gpus = 2,
                                               .scheduling = SchedulingStrategy::placement_group(pg, 1)}).remote(0).get(20s),
               gantry::InfeasibleError);
  EXPECT_THROW(gantry::task(gpu_view).options({.num_cpus = 1, .scheduling = SchedulingStrategy::placement_group(pg, 7)})
                   .remote(0).get(20s),
               gantry::InfeasibleError);
  EXPECT_THROW(gantry::actor(Counter::create).options({.num_gpus = 3, .scheduling = SchedulingStrategy::placement_group(pg)})
                   .remote(0),
               gantry::InfeasibleError);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);

  // Groups no cluster shape can hold fail at once; bad bundles are errors.
  EXPECT_THROW(gantry::create_placement_group({.bundles = {{{"CPU", 1}}, {{"CPU", 1}}},
                                               .strategy = gantry::PlacementStrategy::kStrictSpread}),
               gantry::InfeasibleError);
  EXPECT_THROW(gantry::create_placement_group({.bundles = {{{"GPU", 5}}}}), gantry::InfeasibleError);
  EXPECT_THROW(gantry::create_placement_group({.bundles = {{}}}), gantry::Error);
  EXPECT_THROW(gantry::create_placement_group({.bundles = {{{"GPU", 1.5}}}}), gantry::Error);
  EXPECT_THROW(gantry::create_placement_group({.bundles = {{{"CPU", 1}}}, .name = "training"}), gantry::Error);

  // A group that does not fit next to the first waits for it, all or nothing.
  auto big = gantry::create_placement_group({.bundles = {{{"CPU", 2}}, {{"CPU", 2}}}});
  EXPECT_FALSE(big.wait(1500ms));
  // An actor in the waiting group starts once the group is created.
  auto counter = gantry::actor(Counter::create)
                     .options({.num_cpus = 1, .scheduling = SchedulingStrategy::placement_group(big, 1)})
                     .remote(10);
  gantry::remove_placement_group(pg);
  EXPECT_FALSE(gantry::get_placement_group("training").has_value());
  ASSERT_TRUE(big.wait(20s));
  EXPECT_EQ(counter.task(&Counter::increment).remote().get(20s), 11);
  // Removing the group stops what runs in it.
  gantry::remove_placement_group(big);
  gantry::remove_placement_group(big);  // harmless
  EXPECT_FALSE(big.wait(0ms));
  EXPECT_THROW(counter.task(&Counter::increment).remote().get(20s), gantry::ActorDiedError);
  EXPECT_THROW(gantry::task(gpu_view).options({.scheduling = SchedulingStrategy::placement_group(big)}).remote(0).get(20s),
               gantry::InfeasibleError);
  // Its resources are the node's again.
  auto four = gantry::task(gpu_view).options({.num_cpus = 4, .num_gpus = 4}).remote(0).get(20s);
  EXPECT_EQ(four.ids.size(), 4u);
}

TEST_F(Runtime, RuntimeContextDescribesTheTask) {
  start({.num_cpus = 2, .resources = {{"special", 2}}});
  auto driver = gantry::runtime_context();
  EXPECT_TRUE(driver.is_driver);
  Context c = gantry::task(context_task).options({.num_cpus = 0.5, .resources = {{"special", 1}}}).remote().get();
  EXPECT_FALSE(c.is_driver);
  EXPECT_EQ(c.node_id, driver.node_id);
  EXPECT_EQ(c.job_id, driver.job_id);
  EXPECT_NE(c.worker_id, driver.worker_id);
  EXPECT_NE(c.pid, ::getpid());
  EXPECT_EQ(c.function, "context_task");
  EXPECT_FALSE(c.task_id.empty());
  EXPECT_DOUBLE_EQ(c.resources["CPU"], 0.5);
  EXPECT_DOUBLE_EQ(c.resources["special"], 1);
  EXPECT_EQ(c.session_dir, driver.session_dir);
}

TEST_F(Runtime, WorkerOutputIsPrefixedAndLogged) {
  start({.num_cpus = 1, .log_to_driver = false});
  std::string marker = "marker-" + std::to_string(::getpid());
  gantry::task(say_hello).remote(marker).get();
  std::string logs = gantry::runtime_context().session_dir + "/logs";
  auto deadline = std::chrono::steady_clock::now() + 10s;
  bool found_out = false, found_err = false;
  while (!(found_out && found_err) && std::chrono::steady_clock::now() < deadline) {
    for (const auto& entry : std::filesystem::directory_iterator(logs)) {
      if (entry.path().extension() != ".out") continue;
      std::ifstream in(entry.path());
      std::string line;
      while (std::getline(in, line)) {
        if (line.find("hello " + marker) != std::string::npos) {
          found_out = true;
          EXPECT_EQ(line.rfind("(say_hello pid=", 0), 0u) << line;
        }
        if (line.find("err " + marker) != std::string::npos) found_err = true;
      }
    }
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(found_out);
  EXPECT_TRUE(found_err);
}

// The ranks of a group must never wait behind each other. After many quick calls the
// submitter pipelines calls of that function onto busy workers; four calls that wait for
// each other must still all run at once on four CPUs (they used to run one after another,
// three of them timing out).
TEST_F(Runtime, CallsThatWaitForEachOtherRunTogetherAfterManyQuickOnes) {
  start({.num_cpus = 4});
  auto root = std::filesystem::temp_directory_path() / ("gantry-barrier-" + std::to_string(::getpid()));
  // One after another, so one leased worker serves them and learns they are quick.
  for (int i = 0; i < 200; ++i)
    ASSERT_GE(gantry::task(file_barrier).remote((root / ("q" + std::to_string(i))).string(), 1).get(), 0);
  for (int round = 0; round < 3; ++round) {
    std::string dir = (root / ("meet" + std::to_string(round))).string();
    auto t0 = std::chrono::steady_clock::now();
    std::vector<gantry::ObjectRef<int64_t>> ranks;
    for (int r = 0; r < 4; ++r) ranks.push_back(gantry::task(file_barrier).remote(dir, 4));
    for (auto& r : ranks) EXPECT_GE(r.get(), 0) << "a call never met the others (round " << round << ")";
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10)) << "round " << round;
  }
  std::filesystem::remove_all(root);
}

TEST_F(Runtime, NestedTasksDoNotDeadlockOnCpus) {
  start({.num_cpus = 2});
  // Each client holds a CPU and waits on subtasks that need CPUs too.
  std::vector<gantry::ObjectRef<int64_t>> clients;
  for (int i = 0; i < 2; ++i) clients.push_back(gantry::task(fan_out).remote(6));
  for (auto v : gantry::get(clients)) EXPECT_EQ(v, 6 * 55);
}

TEST_F(Runtime, ActorsKeepStateAndCallsRunInOrder) {
  start();
  auto c = gantry::actor(Counter::create).remote(5);
  EXPECT_EQ(c.task(&Counter::increment).remote().get(), 6);
  std::vector<gantry::ObjectRef<int>> refs;
  for (int i = 0; i < 100; ++i) refs.push_back(c.task(&Counter::increment).remote());
  auto values = gantry::get(refs);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(values[i], 7 + i);
  EXPECT_EQ(c.task(&Counter::value).remote().get(), 106);
  // Arguments by reference, resolved before the method runs.
  EXPECT_EQ(c.task(&Counter::add).remote(gantry::put(10)).get(), 116);
  try {
    c.task(&Counter::fail).remote().get();
    FAIL();
  } catch (const gantry::TaskError& e) {
    EXPECT_EQ(e.remote_type(), "std::runtime_error");
    EXPECT_EQ(e.function(), "Counter::fail");
  }
  EXPECT_EQ(c.task(&Counter::value).remote().get(), 116) << "an exception does not kill the actor";
}

TEST_F(Runtime, FloodOfCallsWithLargeResultsDoesNotDeadlock) {
  start();
  // Enough traffic both ways to fill the socket buffers while the caller keeps sending.
  auto c = gantry::actor(Counter::create).remote(0);
  std::vector<gantry::ObjectRef<std::string>> refs;
  for (int i = 0; i < 20000; ++i) refs.push_back(c.task(&Counter::payload).remote(4000));
  size_t total_bytes = 0;
  for (const auto& r : refs) total_bytes += r.get(60s).size();
  EXPECT_EQ(total_bytes, size_t{20000} * 4000);
}

TEST_F(Runtime, ActorHandlesPassToTasks) {
  start();
  auto c = gantry::actor(Counter::create).remote(0);
  std::vector<gantry::ObjectRef<int>> refs;
  for (int i = 0; i < 4; ++i) refs.push_back(gantry::task(bump).remote(c, 25));
  gantry::get(refs);
  EXPECT_EQ(c.task(&Counter::value).remote().get(), 100);
}

TEST_F(Runtime, NamedActorsAreFoundAndKilled) {
  start();
  auto c = gantry::actor(Counter::create).options({.name = "counter"}).remote(1);
  auto same = gantry::get_actor<Counter>("counter");
  ASSERT_TRUE(same.has_value());
  EXPECT_EQ(same->task(&Counter::increment).remote().get(), 2);
  EXPECT_FALSE(gantry::get_actor<Counter>("nobody").has_value());
  EXPECT_THROW(gantry::get_actor<Failing>("counter"), gantry::Error) << "wrong class";
  EXPECT_THROW(gantry::actor(Counter::create).options({.name = "counter"}).remote(1), gantry::Error)
      << "names are unique";
  gantry::kill(c);
  EXPECT_THROW(c.task(&Counter::value).remote().get(10s), gantry::ActorDiedError);
  EXPECT_FALSE(gantry::get_actor<Counter>("counter").has_value());
}

TEST_F(Runtime, DeadActorProcessRestartsWithinMaxRestarts) {
  start();
  auto c = gantry::actor(Counter::create).options({.max_restarts = 1}).remote(10);
  EXPECT_EQ(c.task(&Counter::increment).remote().get(), 11);
  int pid = c.task(&Counter::pid).remote().get();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // The restarted actor re-ran its factory: state starts over.
  int value = -1;
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      value = c.task(&Counter::increment).remote().get(10s);
      break;
    } catch (const gantry::ActorDiedError&) {
      // A call that was in flight when it died fails; later calls reach the restart.
    }
  }
  EXPECT_EQ(value, 11);
  int new_pid = c.task(&Counter::pid).remote().get();
  EXPECT_NE(new_pid, pid);
  ASSERT_EQ(::kill(new_pid, SIGKILL), 0);
  EXPECT_THROW(
      {
        for (int i = 0; i < 50; ++i) {
          c.task(&Counter::increment).remote().get(10s);
          std::this_thread::sleep_for(100ms);
        }
      },
      gantry::ActorDiedError);
}

TEST_F(Runtime, ActorWhoseFactoryThrowsIsDead) {
  start();
  auto f = gantry::actor(Failing::create).remote();
  try {
    f.task(&Failing::ping).remote().get(20s);
    FAIL();
  } catch (const gantry::ActorDiedError& e) {
    EXPECT_NE(std::string(e.what()).find("factory says no"), std::string::npos) << e.what();
  }
}

TEST_F(Runtime, UnregisteredFunctionsAreAClearError) {
  start();
  try {
    gantry::task(not_registered);
    FAIL();
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("GANTRY_REMOTE"), std::string::npos);
  }
}

size_t count_files(const std::string& dir) {
  size_t n = 0;
  std::error_code ec;
  // Freed objects' files kept for reuse ("free-N") hold no object.
  for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator(); ++it)
    n += it->path().filename().string().rfind("free-", 0) != 0;
  return n;
}

std::string store_dir() {
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm"))
    if (entry.path().filename().string().rfind("gantry_" + std::to_string(::getpid()) + "_", 0) == 0)
      return entry.path().string();
  return {};
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 10s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

TEST_F(Runtime, LastReferenceGoneFreesTheObjectEverywhere) {
  start();
  std::string dir = store_dir();
  ASSERT_FALSE(dir.empty());
  size_t before = count_files(dir);
  {
    auto big = gantry::put(ones(1 << 20));
    EXPECT_EQ(count_files(dir), before + 1);
    auto result = gantry::task(ones).remote(1 << 20);  // a large task result
    result.get();
    EXPECT_EQ(count_files(dir), before + 2);
  }
  EXPECT_TRUE(eventually([&] { return count_files(dir) == before; })) << "objects were not freed";

  // A borrower (an actor holding a nested ref) keeps the object alive after the driver
  // dropped its own reference, until the borrower lets go.
  auto c = gantry::actor(Counter::create).remote(0);
  {
    std::vector<gantry::ObjectRef<std::vector<double>>> refs{gantry::put(ones(1 << 20))};
    EXPECT_EQ(c.task(&Counter::hold).remote(refs).get(), 1);
  }
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(count_files(dir), before + 1) << "a borrowed object was freed";
  EXPECT_DOUBLE_EQ(c.task(&Counter::sum_held).remote().get(), double(1 << 20));
  c.task(&Counter::release).remote().get();
  EXPECT_TRUE(eventually([&] { return count_files(dir) == before; })) << "borrowed object not freed";
  // Nested refs into a task work too, even when the caller's only copies are temporaries
  // gone before the task runs: the call pins them.
  std::vector<gantry::ObjectRef<std::vector<double>>> nested{gantry::put(ones(10)), gantry::put(ones(20))};
  EXPECT_DOUBLE_EQ(gantry::task(sum_nested).remote(nested).get(), 30.0);
  auto later = gantry::task(sum_nested).remote(
      std::vector<gantry::ObjectRef<std::vector<double>>>{gantry::put(ones(1 << 20)), gantry::put(ones(5))});
  EXPECT_DOUBLE_EQ(later.get(), double((1 << 20) + 5));
  EXPECT_TRUE(eventually([&] { return count_files(dir) == before; })) << "pinned nested refs not released";

  // A put value holding refs keeps them alive for as long as it lives.
  {
    auto outer = gantry::put(std::vector<gantry::ObjectRef<std::vector<double>>>{gantry::put(ones(1 << 20))});
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(count_files(dir), before + 1) << "a ref inside a put value was freed";
    EXPECT_DOUBLE_EQ(gantry::task(sum_nested).remote(outer).get(), double(1 << 20));
  }
  EXPECT_TRUE(eventually([&] { return count_files(dir) == before; })) << "refs inside a freed put value kept";
}

TEST_F(Runtime, RefsReturnedByTasksLiveAsLongAsTheResultHoldingThem) {
  start();
  std::string dir = store_dir();
  ASSERT_FALSE(dir.empty());
  size_t before = count_files(dir);
  {
    // The worker's own reference is gone once it returns; the result keeps the object.
    auto outer = gantry::task(make_inner).remote(1 << 20);
    gantry::ObjectRef<std::vector<double>> inner = outer.get();
    EXPECT_EQ(count_files(dir), before + 1);
    // Dropping the result while holding the decoded ref keeps the object too.
    { auto drop = std::move(outer); }
    std::this_thread::sleep_for(200ms);
    EXPECT_DOUBLE_EQ(total(inner.get()), double(1 << 20));
  }
  EXPECT_TRUE(eventually([&] { return count_files(dir) == before; })) << "returned object not freed";

  // A result never decoded by the driver, passed on to another task that reads the refs.
  {
    auto list = gantry::task(make_inner_list).remote(1 << 20, 2);
    ASSERT_EQ(gantry::wait(std::vector{list}, 1, 10s).ready.size(), 1u);
    std::this_thread::sleep_for(200ms);
    EXPECT_EQ(count_files(dir), before + 2) << "refs inside an unread result were freed";
    EXPECT_DOUBLE_EQ(gantry::task(sum_nested).remote(list).get(), double(2 << 20));
  }
  EXPECT_TRUE(eventually([&] { return count_files(dir) == before; })) << "refs inside a freed result kept";

  // Refs to the results of tasks a task submitted (owned by that worker, small, inline).
  auto children = gantry::task(spawn_children).remote(10).get();
  ASSERT_EQ(children.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(children[static_cast<size_t>(i)].get(), fibonacci(i)) << i;
}

TEST_F(Runtime, FullObjectStoreIsAnErrorNotACrash) {
  start({.num_cpus = 1, .object_store_memory = 8 << 20});
  auto fits = gantry::put(ones(512 * 1024));  // 4 MiB
  EXPECT_THROW(gantry::put(ones(2 << 20)), gantry::ObjectStoreFullError);  // 16 MiB
  auto too_big_result = gantry::task(ones).remote(2 << 20);
  EXPECT_THROW(too_big_result.get(), gantry::TaskError);
  EXPECT_DOUBLE_EQ(total(fits.get()), 512 * 1024.0) << "what was stored is intact";
  EXPECT_EQ(gantry::task(fibonacci).remote(10).get(), 55);
}

size_t resident_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  return 0;
}

TEST_F(Runtime, HundredThousandTasksDoNotGrowTheDriver) {
  start();
  auto run_batch = [] {
    std::vector<gantry::ObjectRef<int64_t>> refs;
    refs.reserve(10000);
    for (int i = 0; i < 10000; ++i) refs.push_back(gantry::task(fibonacci).remote(1));
    int64_t sum = 0;
    for (auto v : gantry::get(refs)) sum += v;
    return sum;
  };
  for (int i = 0; i < 2; ++i) EXPECT_EQ(run_batch(), 10000);  // warm-up: pools and arenas
  size_t base = resident_kb();
  for (int i = 0; i < 10; ++i) EXPECT_EQ(run_batch(), 10000);
  size_t after = resident_kb();
#ifdef GANTRY_TEST_UNDER_TSAN
  // The resident size includes ThreadSanitizer's own shadow and history memory, which
  // grows with the traffic it watches.
  constexpr size_t kAllowedKb = 48 * 1024;
#else
  constexpr size_t kAllowedKb = 16 * 1024;
#endif
  EXPECT_LT(after, base + kAllowedKb) << "driver grew from " << base << " kB to " << after << " kB over 100,000 tasks";
}

TEST_F(Runtime, InitTwiceIsAnErrorAndShutdownIsIdempotent) {
  start();
  EXPECT_THROW(gantry::init(), gantry::Error);
  gantry::shutdown();
  gantry::shutdown();
  EXPECT_FALSE(gantry::is_initialized());
  EXPECT_THROW(gantry::task(fibonacci).remote(1), gantry::Error);
  start();
  EXPECT_EQ(gantry::task(fibonacci).remote(12).get(), 144);
}

}  // namespace

#if defined(__SANITIZE_ADDRESS__)
// ASan keeps freed memory in a quarantine (256 MB by default), which would read as driver
// growth in HundredThousandTasksDoNotGrowTheDriver; a small one keeps RSS meaningful.
extern "C" const char* __asan_default_options() { return "quarantine_size_mb=4"; }
#endif

int main(int argc, char** argv) {
  // This executable is also its own worker: in a worker, init serves tasks, never returns.
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
