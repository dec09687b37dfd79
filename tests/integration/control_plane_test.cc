// The control-plane API libraries build on (key-value store, resources, placement group
// nodes, readiness, mixed-type waits), on the embedded cluster with real worker processes
// of this executable.

#include <gantry/gantry.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <thread>

using namespace std::chrono_literals;

namespace {

int64_t add_many(std::string key, int times) {
  int64_t last = 0;
  for (int i = 0; i < times; ++i) last = gantry::kv::add(key, 1);
  return last;
}

std::string wait_for_key(std::string key, int timeout_ms) {
  auto value = gantry::kv::wait(key, std::chrono::milliseconds(timeout_ms));
  return value ? *value : "<timeout>";
}

int put_from_task(std::string key, std::string value) {
  gantry::kv::put(key, value);
  return 0;
}

std::string node_ip_of_task() { return gantry::runtime_context().node_ip; }

int sleep_then(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

std::string word(int n) { return std::string(static_cast<size_t>(n), 'w'); }

class Notes {
 public:
  static Notes* create() { return new Notes(); }
  std::string read(std::string key) { return gantry::kv::get(key).value_or("<none>"); }
  int write(std::string key, std::string value) {
    gantry::kv::put(key, value, {.cluster = true});
    return 0;
  }
};

}  // namespace

GANTRY_REMOTE(add_many, wait_for_key, put_from_task, node_ip_of_task, sleep_then, word);
GANTRY_REMOTE(Notes::create, &Notes::read, &Notes::write);

namespace {

class ControlPlane : public ::testing::Test {
 protected:
  void SetUp() override { gantry::init({.num_cpus = 4}); }
  void TearDown() override { gantry::shutdown(); }
};

TEST_F(ControlPlane, KvPutGetDeleteAndKeys) {
  EXPECT_EQ(gantry::kv::get("a/1"), std::nullopt);
  EXPECT_TRUE(gantry::kv::put("a/1", "one"));
  EXPECT_TRUE(gantry::kv::put("a/2", std::string("t\0o", 3)));
  EXPECT_TRUE(gantry::kv::put("b/1", "other"));
  EXPECT_EQ(gantry::kv::get("a/1"), "one");
  EXPECT_EQ(gantry::kv::get("a/2"), std::string("t\0o", 3)) << "values are bytes";
  EXPECT_FALSE(gantry::kv::put("a/1", "uno", {.overwrite = false})) << "kept the first value";
  EXPECT_EQ(gantry::kv::get("a/1"), "one");
  EXPECT_TRUE(gantry::kv::put("a/1", "uno"));
  EXPECT_EQ(gantry::kv::get("a/1"), "uno");
  EXPECT_EQ(gantry::kv::keys("a/"), (std::vector<std::string>{"a/1", "a/2"}));
  EXPECT_EQ(gantry::kv::keys().size(), 3u);
  EXPECT_TRUE(gantry::kv::del("a/1"));
  EXPECT_FALSE(gantry::kv::del("a/1"));
  EXPECT_EQ(gantry::kv::get("a/1"), std::nullopt);
  // The cluster's namespace is separate from the job's.
  EXPECT_EQ(gantry::kv::get("b/1", {.cluster = true}), std::nullopt);
  gantry::kv::put("b/1", "shared", {.cluster = true});
  EXPECT_EQ(gantry::kv::get("b/1", {.cluster = true}), "shared");
  EXPECT_EQ(gantry::kv::get("b/1"), "other");
}

TEST_F(ControlPlane, KvRejectsBadInputClearly) {
  try {
    gantry::kv::put("", "x");
    FAIL() << "an empty key was taken";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("must not be empty"), std::string::npos) << e.what();
  }
  std::string big((64u << 20) + 1, 'x');
  try {
    gantry::kv::put("big", big);
    FAIL() << "a value over 64 MiB was taken";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("64 MiB"), std::string::npos) << e.what();
  }
  EXPECT_EQ(gantry::kv::get("big"), std::nullopt) << "nothing stored";
  big.pop_back();
  EXPECT_TRUE(gantry::kv::put("big", big)) << "exactly 64 MiB is allowed";
  EXPECT_EQ(gantry::kv::get("big")->size(), big.size());
  gantry::kv::put("text", "hello");
  try {
    gantry::kv::add("text", 1);
    FAIL() << "add on a non-counter";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a counter"), std::string::npos) << e.what();
  }
  EXPECT_EQ(gantry::kv::get("text"), "hello") << "a failed add changes nothing";
  EXPECT_THROW(gantry::kv::add("max", INT64_MAX) + gantry::kv::add("max", 1), gantry::Error);
}

TEST_F(ControlPlane, ConcurrentAddsFromEightProcessesSumExactly) {
  std::vector<gantry::ObjectRef<int64_t>> refs;
  for (int i = 0; i < 8; ++i) refs.push_back(gantry::task(add_many).options({.num_cpus = 0.5}).remote("count", 200));
  std::set<int> pids;
  for (auto& r : refs) r.get();
  EXPECT_EQ(gantry::kv::add("count", 0), 1600);
  EXPECT_EQ(gantry::kv::get("count"), "1600") << "counters read back as decimal text";
}

TEST_F(ControlPlane, WaitWakesWhenAnotherProcessPuts) {
  auto waiter = gantry::task(wait_for_key).remote("ready", 20000);
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(waiter.is_ready()) << "the wait blocks while the key is missing";
  auto put_at = std::chrono::steady_clock::now();
  gantry::kv::put("ready", "go");
  EXPECT_EQ(waiter.get(), "go");
  auto woke_after = std::chrono::steady_clock::now() - put_at;
  EXPECT_LT(woke_after, 5s) << "the wait woke on the put, not on its timeout";
  // A key that exists already returns at once; a missing one times out.
  EXPECT_EQ(gantry::kv::wait("ready", 10ms), "go");
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(gantry::kv::wait("never", 200ms), std::nullopt);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 190ms);
}

TEST_F(ControlPlane, TasksAndActorsShareTheJobsKeys) {
  gantry::task(put_from_task).remote("from-task", "hello").get();
  EXPECT_EQ(gantry::kv::get("from-task"), "hello");
  auto notes = gantry::actor(Notes::create).remote();
  EXPECT_EQ(notes.task(&Notes::read).remote("from-task").get(), "hello");
  notes.task(&Notes::write).remote("from-actor", "hi").get();
  EXPECT_EQ(gantry::kv::get("from-actor", {.cluster = true}), "hi");
}

TEST_F(ControlPlane, ResourcesNodeIpAndBundleNodes) {
  auto total = gantry::cluster_resources();
  EXPECT_EQ(total["CPU"], 4);
  auto idle = gantry::available_resources();
  EXPECT_EQ(idle["CPU"], 4);
  auto busy = gantry::task(sleep_then).options({.num_cpus = 3}).remote(1500);
  bool seen = false;
  for (int i = 0; i < 100 && !seen; ++i) {
    seen = gantry::available_resources()["CPU"] == 1;
    if (!seen) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(seen) << "a running task's CPUs are not available";
  busy.get();
  EXPECT_EQ(gantry::task(node_ip_of_task).remote().get(), "127.0.0.1");
  EXPECT_EQ(gantry::runtime_context().node_ip, "127.0.0.1");

  auto pg = gantry::create_placement_group({.bundles = {{{"CPU", 1}}, {{"CPU", 1}}}});
  ASSERT_TRUE(pg.wait(10s));
  auto nodes = pg.bundle_nodes();
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0], gantry::runtime_context().node_id);
  EXPECT_EQ(nodes[1], gantry::runtime_context().node_id);
  EXPECT_THROW(gantry::PlacementGroup().bundle_nodes(), gantry::Error);
}

TEST_F(ControlPlane, IsReadyAndWaitOverMixedTypes) {
  auto slow = gantry::task(sleep_then).remote(800);
  auto text = gantry::task(word).remote(3);
  EXPECT_EQ(text.get(), "www");
  EXPECT_TRUE(text.is_ready());
  EXPECT_FALSE(slow.is_ready());
  auto [ready, pending] = gantry::wait({slow, text}, 1, 5s);
  EXPECT_EQ(ready, std::vector<size_t>{1});
  EXPECT_EQ(pending, std::vector<size_t>{0});
  auto all = gantry::wait({slow, text, gantry::put(2.5)}, 3);
  EXPECT_EQ(all.ready.size(), 3u);
  EXPECT_TRUE(slow.is_ready());
}

}  // namespace

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
