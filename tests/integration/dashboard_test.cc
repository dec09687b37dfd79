// The dashboard's HTTP API, /metrics and `gantry dashboard` / `gantry timeline` against a
// real two-node cluster started with the `gantry` command on loopback. This test binary
// is the driver's program and, started by the agents, its workers.

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>

#include "gantry/gantry.h"
#include "support/prometheus_parser.h"
#include "support/shell.h"

namespace {

using Json = nlohmann::json;
using gantry::test_support::free_port;
using gantry::test_support::parse_prometheus;
using gantry::test_support::run;

int add(int a, int b) { return a + b; }
GANTRY_REMOTE(add);

int fail_on_purpose(int x) { throw std::runtime_error("dashboard-test failure " + std::to_string(x)); }
GANTRY_REMOTE(fail_on_purpose);

// Prints a marker into this worker's output log and says which worker it was.
int say_marker(std::string marker) {
  std::cout << marker << std::endl;
  return static_cast<int>(::getpid());
}
GANTRY_REMOTE(say_marker);

class Counter {
 public:
  static Counter* create() { return new Counter(); }
  int bump() { return ++n_; }
  int tick() { return ++n_; }  // called by one test only, which counts its calls
  int pid() const { return static_cast<int>(::getpid()); }

 private:
  int n_ = 0;
};
GANTRY_REMOTE(Counter::create, &Counter::bump, &Counter::tick, &Counter::pid);

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The session directory a `gantry start` printed.
std::filesystem::path session_of(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex("session: (\\S+)"))) return {};
  return m[1].str();
}

class DashboardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Short: Unix socket paths under them are limited to about 100 bytes.
    temp_ = std::filesystem::path("/tmp") / ("gdt" + std::to_string(::getpid()));
    side_temp_ = std::filesystem::path("/tmp") / ("gds" + std::to_string(::getpid()));
    std::filesystem::create_directories(temp_);
    std::filesystem::create_directories(side_temp_);
    int port = free_port();
    address_ = "127.0.0.1:" + std::to_string(port);
    auto head = run(std::string(GANTRY_CLI_PATH) + " start --head --node-ip-address 127.0.0.1 --port " +
                    std::to_string(port) + " --num-cpus 2 --num-gpus 2 --dashboard-port 0 --metrics-port 0 --temp-dir " +
                    temp_.string());
    head_output_ = head.out;
    if (head.code != 0) return;
    // The second node joins from its own temp dir, as if on another machine.
    auto side = run("GANTRY_TOKEN=" + read_file(session_of(head.out) / "token") + " " + GANTRY_CLI_PATH +
                    " start --address " + address_ + " --node-ip-address 127.0.0.1 --num-cpus 1 --num-gpus 0 "
                    "--resources '{\"side\": 1}' --metrics-port 0 --temp-dir " + side_temp_.string());
    side_output_ = side.out;
    if (side.code != 0) return;
    head_session_ = session_of(head.out);
    side_session_ = session_of(side.out);
    url_ = read_file(head_session_ / "dashboard_url");
    token_ = read_file(head_session_ / "token");
    ok_ = true;
    gantry::init({.temp_dir = temp_.string(), .address = address_});
  }
  static void TearDownTestSuite() {
    if (gantry::is_initialized()) gantry::shutdown();
    run(std::string(GANTRY_CLI_PATH) + " stop --temp-dir " + side_temp_.string());
    run(std::string(GANTRY_CLI_PATH) + " stop --temp-dir " + temp_.string());
    std::error_code ec;
    std::filesystem::remove_all(temp_, ec);
    std::filesystem::remove_all(side_temp_, ec);
  }
  void SetUp() override { ASSERT_TRUE(ok_) << head_output_ << "\n" << side_output_; }

  static httplib::Client client() {
    std::smatch m;
    std::regex_search(url_, m, std::regex("http://([^:]+):(\\d+)"));
    httplib::Client c(m[1].str(), std::stoi(m[2].str()));
    c.set_read_timeout(30, 0);
    return c;
  }
  static httplib::Headers auth() { return {{"Authorization", "Bearer " + token_}}; }
  // GET with the token; fails the test unless the answer is 200 JSON.
  static Json get(const std::string& path) {
    auto r = client().Get(path.c_str(), auth());
    EXPECT_TRUE(r) << path;
    if (!r) return Json();
    EXPECT_EQ(r->status, 200) << path << ": " << r->body;
    EXPECT_NE(r->get_header_value("Content-Type").find("application/json"), std::string::npos) << path;
    return Json::parse(r->body);
  }
  // GETs `path` until `done` holds for the answer (views are shared for up to 2 s,
  // so what just happened may show only on the next one), for at most 5 s.
  static Json get_until(const std::string& path, const std::function<bool(const Json&)>& done) {
    Json answer;
    for (int i = 0; i < 50; ++i) {
      answer = get(path);
      if (done(answer)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return answer;
  }
  // The id of the first actor `pick` accepts, as the dashboard lists it ("" if none shows).
  static std::string actor_id_where(const std::function<bool(const Json&)>& pick) {
    std::string id;
    get_until("/api/actors", [&](const Json& answer) {
      for (const auto& a : answer["actors"])
        if (pick(a)) id = a["actor_id"];
      return !id.empty();
    });
    return id;
  }
  static Json post(const std::string& path, const Json& body, int expect) {
    auto r = client().Post(path.c_str(), auth(), body.dump(), "application/json");
    EXPECT_TRUE(r) << path;
    if (!r) return Json();
    EXPECT_EQ(r->status, expect) << path << ": " << r->body;
    return Json::parse(r->body);
  }
  static std::string side_node_id() {
    for (const auto& n : gantry::nodes())
      if (n.resources.count("side")) return n.node_id;
    return "";
  }

  static inline std::filesystem::path temp_, side_temp_, head_session_, side_session_;
  static inline std::string address_, url_, token_, head_output_, side_output_;
  static inline bool ok_ = false;
};

TEST_F(DashboardTest, StartPrintsTheDashboardAndMetricsAddresses) {
  EXPECT_NE(head_output_.find("dashboard: http://127.0.0.1:"), std::string::npos) << head_output_;
  EXPECT_NE(head_output_.find("metrics: http://127.0.0.1:"), std::string::npos) << head_output_;
  EXPECT_NE(side_output_.find("metrics: http://127.0.0.1:"), std::string::npos) << side_output_;
}

TEST_F(DashboardTest, RequestsWithoutTheTokenGet401AndChangeNothing) {
  auto actor = gantry::actor(Counter::create).remote();
  ASSERT_EQ(actor.task(&Counter::bump).remote().get(), 1);
  auto c = client();
  for (const char* path : {"/api/cluster", "/api/nodes", "/api/actors", "/api/tasks", "/api/jobs", "/api/logs?node=x",
                           "/api/train", "/api/tune", "/api/timeline", "/metrics", "/assets/app.js"}) {
    auto r = c.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 401) << path;
    auto wrong = c.Get(path, {{"Authorization", "Bearer not-the-token"}});
    EXPECT_EQ(wrong->status, 401) << path;
    auto cookie = c.Get(path, {{"Cookie", "gantry_session=forged"}});
    EXPECT_EQ(cookie->status, 401) << path;
  }
  // The page itself sends a browser to the login page.
  auto page = c.Get("/");
  EXPECT_EQ(page->status, 303);
  EXPECT_EQ(page->get_header_value("Location"), "/login");
  // A kill or a submission without the token does nothing.
  std::string id = actor_id_where([](const Json& a) {
    return a["class_name"].get<std::string>().find("Counter") != std::string::npos && a["state"] == "ALIVE";
  });
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(c.Post(("/api/actors/" + id + "/kill").c_str(), "{}", "application/json")->status, 401);
  EXPECT_EQ(c.Post("/api/jobs", R"({"entrypoint": ["true"]})", "application/json")->status, 401);
  EXPECT_EQ(actor.task(&Counter::bump).remote().get(), 2);  // still alive
  EXPECT_EQ(get("/api/jobs")["jobs"].size(), 0u);
}

TEST_F(DashboardTest, EveryEndpointAnswersInItsShape) {
  // Work for the tables: tasks on both nodes, a failure, an actor, a placement group.
  std::vector<gantry::ObjectRef<int>> refs;
  for (int i = 0; i < 20; ++i) refs.push_back(gantry::task(add).remote(i, 1));
  for (auto& r : refs) r.get();
  EXPECT_THROW(gantry::task(fail_on_purpose).remote(7).get(), gantry::TaskError);
  auto actor = gantry::actor(Counter::create).options({.name = "shape-counter", .num_cpus = 0.5}).remote();
  for (int i = 0; i < 3; ++i) actor.task(&Counter::bump).remote().get();
  auto pg = gantry::create_placement_group({.bundles = {{{"CPU", 0.5}}}});
  ASSERT_TRUE(pg.wait(std::chrono::seconds(10)));
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // past the shared answers

  Json cluster = get("/api/cluster");
  for (const char* key : {"head_address", "nodes", "resources", "object_store", "tasks", "actors", "jobs", "recent_errors"})
    EXPECT_TRUE(cluster.contains(key)) << key << " in " << cluster.dump();
  EXPECT_EQ(cluster["head_address"], address_);
  EXPECT_EQ(cluster["nodes"]["alive"], 2);
  EXPECT_DOUBLE_EQ(cluster["resources"]["total"]["CPU"].get<double>(), 3.0);
  EXPECT_GE(cluster["tasks"]["finished"].get<int64_t>(), 20);
  EXPECT_GE(cluster["tasks"]["failed"].get<int64_t>(), 1);
  bool failure_listed = false;
  for (const auto& e : cluster["recent_errors"])
    failure_listed |= e["kind"] == "task" && e["message"].get<std::string>().find("dashboard-test failure 7") != std::string::npos;
  EXPECT_TRUE(failure_listed) << cluster["recent_errors"].dump();

  Json nodes = get("/api/nodes")["nodes"];
  ASSERT_EQ(nodes.size(), 2u);
  for (const auto& n : nodes) {
    for (const char* key : {"node_id", "hostname", "alive", "resources", "object_store", "workers", "cpu", "memory", "gpus"})
      EXPECT_TRUE(n.contains(key)) << key << " in " << n.dump();
    EXPECT_GT(n["memory"]["total_bytes"].get<double>(), 0);
    EXPECT_GT(n["object_store"]["capacity_bytes"].get<double>(), 0);
  }
  EXPECT_TRUE(nodes[0]["is_head"].get<bool>());
  ASSERT_EQ(nodes[0]["gpus"].size(), 2u);  // --num-gpus 2: logical GPUs, shown as such
  EXPECT_TRUE(nodes[0]["gpus"][0]["logical"].get<bool>());
  EXPECT_TRUE(nodes[0]["gpus"][0]["utilization"].is_null());
  EXPECT_DOUBLE_EQ(nodes[1]["resources"]["total"]["side"].get<double>(), 1.0);

  Json actors = get("/api/actors")["actors"];
  bool found = false;
  for (const auto& a : actors) {
    if (a["name"] != "shape-counter") continue;
    found = true;
    EXPECT_EQ(a["state"], "ALIVE");
    EXPECT_GT(a["pid"].get<int>(), 0);
    EXPECT_EQ(a["node_id"].get<std::string>().size(), 32u);
    EXPECT_DOUBLE_EQ(a["resources"].value("CPU", -1.0), 0.5) << a.dump();
    EXPECT_EQ(a["calls"]["finished"], 3) << a.dump();
  }
  EXPECT_TRUE(found) << actors.dump();

  Json tasks = get("/api/tasks");
  bool add_seen = false;
  for (const auto& f : tasks["functions"])
    if (f["name"].get<std::string>().find("add") != std::string::npos) {
      add_seen = true;
      EXPECT_GE(f["finished"].get<int64_t>(), 20);
    }
  EXPECT_TRUE(add_seen) << tasks.dump();
  ASSERT_FALSE(tasks["recent_failures"].empty());
  Json f = tasks["recent_failures"][0];
  EXPECT_EQ(f["error_type"], "std::runtime_error");
  EXPECT_EQ(f["message"], "dashboard-test failure 7");
  EXPECT_GT(f["pid"].get<int>(), 0);

  Json objects = get("/api/objects");
  EXPECT_EQ(objects["by_node"].size(), 2u);
  EXPECT_TRUE(objects.contains("by_owner"));

  Json groups = get("/api/placement_groups")["placement_groups"];
  ASSERT_FALSE(groups.empty());
  EXPECT_EQ(groups.back()["state"], "CREATED");
  EXPECT_EQ(groups.back()["bundles"].size(), 1u);
  EXPECT_EQ(groups.back()["bundles"][0]["node_id"].get<std::string>().size(), 32u);
  gantry::remove_placement_group(pg);

  Json jobs = get("/api/jobs");
  ASSERT_FALSE(jobs["drivers"].empty());
  EXPECT_EQ(jobs["drivers"][0]["state"], "RUNNING");
  EXPECT_TRUE(get("/api/train")["runs"].is_array());
  EXPECT_TRUE(get("/api/tune")["experiments"].is_array());
  EXPECT_EQ(client().Get("/api/train/none", auth())->status, 404);
  EXPECT_EQ(client().Get("/api/nope", auth())->status, 404);
  EXPECT_EQ(client().Get("/api/stacks?node=abc&pid=1", auth())->status, 400);

  Json timeline = get("/api/timeline");
  int spans = 0;
  for (const auto& e : timeline["traceEvents"])
    if (e["ph"] == "X" && e["name"].get<std::string>().find("add") != std::string::npos) {
      ++spans;
      EXPECT_GE(e["dur"].get<int64_t>(), 0);
    }
  EXPECT_GE(spans, 20);
}

TEST_F(DashboardTest, KillsAnActorThroughTheApi) {
  auto actor = gantry::actor(Counter::create).options({.name = "doomed", .max_restarts = 2}).remote();
  ASSERT_EQ(actor.task(&Counter::bump).remote().get(), 1);
  std::string id = actor_id_where([](const Json& a) { return a["name"] == "doomed"; });
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(post("/api/actors/" + id + "/kill", {{"no_restart", true}}, 200)["killed"], id);
  EXPECT_THROW(actor.task(&Counter::bump).remote().get(), gantry::ActorDiedError);
  std::string state;
  Json listed2 = get("/api/actors");
  for (const auto& a : listed2["actors"])
    if (a["actor_id"] == id) state = a["state"];
  EXPECT_EQ(state, "DEAD");
  post("/api/actors/" + std::string(32, '0') + "/kill", Json::object(), 404);
  post("/api/actors/123/kill", Json::object(), 400);
}

// The head keeps every dead actor; /api/actors lists the live ones and as many dead ones as
// asked (1,000 unless told), and counts the rest.
TEST_F(DashboardTest, ListsAtMostTheDeadActorsAskedFor) {
  for (int i = 0; i < 2; ++i) {
    auto actor = gantry::actor(Counter::create).remote();
    actor.task(&Counter::bump).remote().get();
    gantry::kill(actor);
  }
  auto count = [](const Json& answer, const std::string& state) {
    int n = 0;
    for (const auto& a : answer["actors"]) n += a["state"] == state;
    return n;
  };
  Json all = get_until("/api/actors", [&](const Json& a) { return count(a, "DEAD") >= 2; });
  int dead = count(all, "DEAD"), alive = count(all, "ALIVE");
  ASSERT_GE(dead, 2) << all.dump();
  EXPECT_EQ(all["dead_not_listed"], 0);
  Json none = get("/api/actors?dead=0");
  EXPECT_EQ(count(none, "DEAD"), 0);
  EXPECT_EQ(count(none, "ALIVE"), alive);
  EXPECT_EQ(none["dead_not_listed"], dead);
  Json one = get("/api/actors?dead=1");
  EXPECT_EQ(count(one, "DEAD"), 1);
  EXPECT_EQ(one["dead_not_listed"], dead - 1);
  auto bad = client().Get("/api/actors?dead=-1", auth());
  EXPECT_EQ(bad->status, 400);
  EXPECT_NE(bad->body.find("'dead'"), std::string::npos) << bad->body;
}

// Polled views are computed once per 2 s and shared; a shared answer says its Age.
TEST_F(DashboardTest, PolledViewsAreSharedAndSaySo) {
  for (const char* path : {"/api/cluster", "/api/nodes", "/api/actors", "/api/tasks", "/metrics"}) {
    // Twice back to back; again if the first was an answer that expired just then.
    std::string first_body, second_body;
    int status = 0;
    bool shared = false;
    for (int attempt = 0; attempt < 3 && !shared; ++attempt) {
      auto first = client().Get(path, auth());
      auto second = client().Get(path, auth());
      ASSERT_TRUE(first && second) << path;
      first_body = first->body;
      second_body = second->body;
      status = second->status;
      shared = second->has_header("Age");
    }
    EXPECT_EQ(status, 200) << path;
    EXPECT_TRUE(shared) << path << " was computed again";
    EXPECT_EQ(first_body, second_body) << path;
  }
}

// A worker's exit must not lower the cluster's counts (Prometheus would read a fall of
// gantry_tasks_finished_total as a restart): the head keeps what exited workers had done.
TEST_F(DashboardTest, CountsOutliveTheWorkerThatMadeThem) {
  auto actor = gantry::actor(Counter::create).options({.name = "ticker"}).remote();
  int pid = actor.task(&Counter::pid).remote().get();
  for (int i = 0; i < 4; ++i) actor.task(&Counter::tick).remote().get();
  auto ticks = [](const Json& tasks) {
    for (const auto& f : tasks["functions"])
      if (f["name"].get<std::string>().find("tick") != std::string::npos) return f["finished"].get<int64_t>();
    return int64_t{0};
  };
  ASSERT_EQ(ticks(get_until("/api/tasks", [&](const Json& t) { return ticks(t) == 4; })), 4);
  std::string id = actor_id_where([](const Json& a) { return a["name"] == "ticker"; });
  ASSERT_FALSE(id.empty());
  post("/api/actors/" + id + "/kill", {{"no_restart", true}}, 200);

  // Until its node's agent no longer lists the actor's worker process.
  auto listed = [pid](const Json& nodes) {
    for (const auto& n : nodes["nodes"])
      for (const auto& w : n["worker_processes"])
        if (w["pid"] == pid) return true;
    return false;
  };
  ASSERT_FALSE(listed(get_until("/api/nodes", [&](const Json& n) { return !listed(n); })));
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // past the shared answers

  EXPECT_EQ(ticks(get("/api/tasks")), 4);
  Json dead, listed_actors = get("/api/actors");
  for (const auto& a : listed_actors["actors"])
    if (a["actor_id"] == id) dead = a;
  EXPECT_EQ(dead["state"], "DEAD") << dead.dump();
  EXPECT_EQ(dead["calls"]["finished"], 5) << dead.dump();  // pid() and four ticks
  auto metrics = parse_prometheus(client().Get("/metrics", auth())->body);
  double counted = 0;
  for (const auto& s : metrics["gantry_tasks_finished_total"].samples)
    if (s.labels.at("function").find("tick") != std::string::npos) counted = s.value;
  EXPECT_EQ(counted, 4);
}

TEST_F(DashboardTest, SubmitsFollowsAndStopsAJob) {
  Json bad = post("/api/jobs", {{"entrypoint", 5}}, 400);
  EXPECT_NE(bad["error"].get<std::string>().find("entrypoint"), std::string::npos);
  post("/api/jobs", Json::array(), 400);
  Json job = post("/api/jobs", {{"entrypoint", {"/bin/sh", "-c", "echo dashboard-job-started; sleep 60"}}}, 201);
  std::string id = job["job_id"];
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(job["status"], "RUNNING");
  std::string text;
  for (int i = 0; i < 100 && text.find("dashboard-job-started") == std::string::npos; ++i) {
    text = get("/api/jobs/" + id + "/logs?offset=0")["text"];
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(text.find("dashboard-job-started"), std::string::npos);
  EXPECT_EQ(get("/api/jobs/" + id)["status"], "RUNNING");
  post("/api/jobs/" + id + "/stop", Json::object(), 200);
  std::string status;
  for (int i = 0; i < 100; ++i) {
    status = get("/api/jobs/" + id)["status"];
    if (status != "RUNNING") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(status, "STOPPED");
  EXPECT_EQ(client().Get("/api/jobs/no-such-job", auth())->status, 404);
}

TEST_F(DashboardTest, TailsAndFollowsAWorkerLogOnAnotherNode) {
  std::string side = side_node_id();
  ASSERT_FALSE(side.empty());
  std::string marker = "dashboard-marker-" + std::to_string(::getpid());
  int pid = gantry::task(say_marker)
                .options({.scheduling = gantry::SchedulingStrategy::node_affinity(side)})
                .remote(marker)
                .get();
  Json files = get("/api/logs?node=" + side)["files"];
  bool listed = false;
  for (const auto& f : files) listed |= f["name"] == "worker-" + std::to_string(pid) + ".out" && f["pid"] == pid;
  EXPECT_TRUE(listed) << files.dump();
  Json tail;
  for (int i = 0; i < 50; ++i) {
    tail = get("/api/logs?node=" + side + "&worker=" + std::to_string(pid) + "&tail=50");
    if (tail["text"].get<std::string>().find(marker) != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(tail["text"].get<std::string>().find(marker), std::string::npos) << tail.dump();
  // Follow: from next_offset only what the worker writes afterwards.
  uint64_t next = tail["next_offset"];
  gantry::task(say_marker)
      .options({.scheduling = gantry::SchedulingStrategy::node_affinity(side)})
      .remote(marker + "-later")
      .get();
  Json more;
  for (int i = 0; i < 50; ++i) {
    more = get("/api/logs?node=" + side + "&worker=" + std::to_string(pid) + "&offset=" + std::to_string(next));
    if (!more["text"].get<std::string>().empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  // The side node has one CPU: the same worker ran the second task.
  EXPECT_NE(more["text"].get<std::string>().find(marker + "-later"), std::string::npos) << more.dump();
  EXPECT_EQ(more["text"].get<std::string>().find(marker + "\n"), std::string::npos);
  // The event stream carries the tail as its first event.
  std::string streamed;
  client().Get(("/api/logs?node=" + side + "&worker=" + std::to_string(pid) + "&follow=1").c_str(), auth(),
               [&](const char* data, size_t n) {
                 streamed.append(data, n);
                 return streamed.find("\n\n") == std::string::npos;  // stop after the first event
               });
  EXPECT_EQ(streamed.rfind("data: ", 0), 0u) << streamed;
  EXPECT_NE(streamed.find(marker), std::string::npos);
  // Names outside the logs directory are refused.
  EXPECT_EQ(client().Get(("/api/logs?node=" + side + "&file=../token").c_str(), auth())->status, 404);
  EXPECT_EQ(client().Get(("/api/logs?node=" + side + "&tail=zero&worker=1").c_str(), auth())->status, 400);
}

TEST_F(DashboardTest, ShowsAWorkersThreadStacks) {
  auto actor = gantry::actor(Counter::create).remote();
  int pid = actor.task(&Counter::pid).remote().get();
  std::string node;
  get_until("/api/actors", [&](const Json& answer) {
    for (const auto& a : answer["actors"])
      if (a["pid"] == pid) node = a["node_id"];
    return !node.empty();
  });
  ASSERT_FALSE(node.empty());
  auto r = client().Get(("/api/stacks?node=" + node + "&pid=" + std::to_string(pid)).c_str(), auth());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  Json stacks = Json::parse(r->body);
  EXPECT_EQ(stacks["pid"], pid);
  EXPECT_NE(stacks["text"].get<std::string>().find("#0"), std::string::npos) << stacks["text"];
  // Only the node's workers: not its agent, not pid 1.
  EXPECT_EQ(client().Get(("/api/stacks?node=" + node + "&pid=1").c_str(), auth())->status, 404);
}

TEST_F(DashboardTest, MetricsOfTheHeadAndOfEveryAgentParseStrictly) {
  gantry::task(add).remote(1, 2).get();
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // past the shared answers
  auto r = client().Get("/metrics", auth());
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/plain; version=0.0.4"), std::string::npos);
  auto head = parse_prometheus(r->body);
  for (const auto& [name, family] : head) {
    EXPECT_EQ(name.rfind("gantry_", 0), 0u) << name;
    EXPECT_FALSE(family.help.empty()) << name;
  }
  for (const char* name : {"gantry_nodes", "gantry_resource_capacity", "gantry_resource_used", "gantry_object_store_used_bytes",
                           "gantry_object_store_objects", "gantry_object_store_evicted_total", "gantry_node_memory_used_bytes",
                           "gantry_node_cpu_cores", "gantry_gpu_info", "gantry_gpu_in_use", "gantry_tasks",
                           "gantry_tasks_finished_total", "gantry_tasks_failed_total", "gantry_actors", "gantry_jobs"})
    EXPECT_TRUE(head.count(name)) << name << " missing from\n" << r->body;
  EXPECT_EQ(head["gantry_gpu_info"].samples.size(), 2u);
  EXPECT_EQ(head["gantry_gpu_info"].samples[0].labels["logical"], "true");
  EXPECT_EQ(head["gantry_gpu_utilization_ratio"].samples.size(), 0u);  // logical GPUs have no figures
  std::set<std::string> nodes;
  for (const auto& s : head["gantry_node_info"].samples) nodes.insert(s.labels.at("node"));
  EXPECT_EQ(nodes.size(), 2u);
  bool add_counted = false;
  for (const auto& s : head["gantry_tasks_finished_total"].samples)
    add_counted |= s.labels.at("function").find("add") != std::string::npos && s.value >= 1;
  EXPECT_TRUE(add_counted);

  // Each agent serves its own node's figures, with the same token rule.
  for (const auto& session : {head_session_, side_session_}) {
    std::string url = read_file(session / "metrics_url");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(url, m, std::regex("http://([^:]+):(\\d+)/metrics"))) << url;
    httplib::Client agent(m[1].str(), std::stoi(m[2].str()));
    EXPECT_EQ(agent.Get("/metrics")->status, 401);
    auto a = agent.Get("/metrics", auth());
    ASSERT_EQ(a->status, 200);
    auto families = parse_prometheus(a->body);
    ASSERT_EQ(families["gantry_node_info"].samples.size(), 1u);
    EXPECT_TRUE(families.count("gantry_node_memory_total_bytes"));
    EXPECT_FALSE(families.count("gantry_nodes"));  // cluster-wide families are the head's
  }
  // promtool, where installed, agrees.
  if (std::system("command -v promtool >/dev/null 2>&1") == 0) {
    std::ofstream(temp_ / "metrics.txt") << r->body;
    auto check = run("promtool check metrics < " + (temp_ / "metrics.txt").string());
    EXPECT_EQ(check.code, 0) << check.out;
  }
}

TEST_F(DashboardTest, OneTimeLoginLinksAndTheLoginForm) {
  auto out = run(std::string(GANTRY_CLI_PATH) + " dashboard --address " + address_ + " --temp-dir " + temp_.string());
  ASSERT_EQ(out.code, 0) << out.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out.out, m, std::regex("/login\\?link=(\\S+)"))) << out.out;
  std::string link = "/login?link=" + m[1].str();
  auto c = client();
  auto first = c.Get(link.c_str());
  ASSERT_EQ(first->status, 303) << first->body;
  std::string cookie = first->get_header_value("Set-Cookie");
  EXPECT_NE(cookie.find("HttpOnly"), std::string::npos);
  EXPECT_NE(cookie.find("SameSite=Strict"), std::string::npos);
  std::string session = cookie.substr(0, cookie.find(';'));
  auto api = c.Get("/api/nodes", {{"Cookie", session}});
  EXPECT_EQ(api->status, 200);
  auto page = c.Get("/", {{"Cookie", session}});
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("/assets/app.js"), std::string::npos);
  EXPECT_EQ(c.Get("/assets/app.js", {{"Cookie", session}})->status, 200);
  EXPECT_EQ(c.Get(link.c_str())->status, 401);  // once only
  // A change with the cookie from another site is refused.
  auto cross = c.Post("/api/jobs", {{"Cookie", session}, {"Origin", "http://evil.example"}},
                      R"({"entrypoint": ["true"]})", "application/json");
  EXPECT_EQ(cross->status, 403);
  // The form takes the token once.
  EXPECT_EQ(c.Post("/login", "token=wrong", "application/x-www-form-urlencoded")->status, 401);
  auto form = c.Post("/login", "token=" + token_, "application/x-www-form-urlencoded");
  EXPECT_EQ(form->status, 303);
  EXPECT_NE(form->get_header_value("Set-Cookie").find("gantry_session="), std::string::npos);
}

TEST_F(DashboardTest, TimelineCommandWritesAChromeTrace) {
  for (int i = 0; i < 5; ++i) gantry::task(add).remote(i, i).get();
  std::string file = (temp_ / "trace.json").string();
  auto out = run(std::string(GANTRY_CLI_PATH) + " timeline --address " + address_ + " --temp-dir " + temp_.string() +
                 " -o " + file);
  ASSERT_EQ(out.code, 0) << out.out;
  EXPECT_NE(out.out.find("task span(s)"), std::string::npos) << out.out;
  std::ifstream in(file);
  Json trace = Json::parse(in);
  int spans = 0, threads = 0;
  for (const auto& e : trace["traceEvents"]) {
    spans += e["ph"] == "X";
    threads += e["ph"] == "M" && e["name"] == "thread_name";
    if (e["ph"] == "X") {
      EXPECT_TRUE(e["ts"].is_number());
      EXPECT_TRUE(e["dur"].is_number());
      EXPECT_TRUE(e["args"].contains("task_id"));
    }
  }
  EXPECT_GE(spans, 5);
  EXPECT_GE(threads, 1);
}

}  // namespace

int main(int argc, char** argv) {
  // This executable is also its own worker: in a worker, init serves tasks, never returns.
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
