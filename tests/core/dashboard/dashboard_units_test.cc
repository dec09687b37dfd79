// The dashboard's parts on their own: the Prometheus writer (read back by the strict
// parser), login links, log files, the task event log and the host and GPU monitors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "agent/host_monitor.h"
#include "agent/node_logs.h"
#include "dashboard/login_link.h"
#include "dashboard/node_metrics.h"
#include "dashboard/prometheus_text.h"
#include "runtime/task_event_log.h"
#include "support/prometheus_parser.h"

namespace gantry::internal {
namespace {

using test_support::parse_prometheus;
using test_support::PromParseError;

TEST(PrometheusText, WritesFamiliesThatTheStrictParserReadsBack) {
  PrometheusText m;
  m.gauge("gantry_x", "An x.", {{"node", "a"}, {"kind", "quote\" back\\ line\nend"}}, 1.5);
  m.counter("gantry_y_total", "A y.", {}, 3);
  m.gauge("gantry_x", "ignored second help", {{"node", "b"}, {"kind", "plain"}}, std::nan(""));
  m.gauge("gantry_z", "Infinite.", {}, INFINITY);
  auto families = parse_prometheus(m.str());
  ASSERT_EQ(families.size(), 3u);
  EXPECT_EQ(families["gantry_x"].type, "gauge");
  ASSERT_EQ(families["gantry_x"].samples.size(), 2u);  // grouped under one TYPE line
  EXPECT_EQ(families["gantry_x"].samples[0].labels["kind"], "quote\" back\\ line\nend");
  EXPECT_DOUBLE_EQ(families["gantry_x"].samples[0].value, 1.5);
  EXPECT_TRUE(std::isnan(families["gantry_x"].samples[1].value));
  EXPECT_EQ(families["gantry_y_total"].type, "counter");
  EXPECT_TRUE(std::isinf(families["gantry_z"].samples[0].value));
}

TEST(PrometheusText, RefusesInvalidNames) {
  PrometheusText m;
  EXPECT_THROW(m.gauge("9bad", "", {}, 1), std::invalid_argument);
  EXPECT_THROW(m.gauge("gantry-bad", "", {}, 1), std::invalid_argument);
  EXPECT_THROW(m.gauge("gantry_ok", "", {{"__reserved", "x"}}, 1), std::invalid_argument);
  EXPECT_THROW(m.gauge("gantry_ok", "", {{"bad-label", "x"}}, 1), std::invalid_argument);
  EXPECT_THROW(m.counter("gantry_count", "", {}, 1), std::invalid_argument);  // no _total
  EXPECT_THROW(m.gauge("gantry_bytes_total", "", {}, 1), std::invalid_argument);  // a counter's suffix
  m.gauge("gantry_t", "", {}, 1);
  EXPECT_THROW(m.counter("gantry_t", "", {}, 1), std::invalid_argument);      // not _total either
}

TEST(PrometheusParser, RejectsMalformedExpositions) {
  EXPECT_THROW(parse_prometheus("gantry_a 1\n"), PromParseError);  // no TYPE
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a gauge\ngantry_a{x=\"1\",x=\"2\"} 1\n"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a gauge\ngantry_a{x=1} 1\n"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a gauge\ngantry_a one\n"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a gauge\ngantry_a 1\ngantry_a 2\n"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a counter\ngantry_a 1\n"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a_total gauge\ngantry_a_total 1\n"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a gauge\n# TYPE gantry_b gauge\ngantry_a 1\n"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a gauge\ngantry_a 1"), PromParseError);
  EXPECT_THROW(parse_prometheus("# TYPE gantry_a gauge\ngantry_a{x=\"\\t\"} 1\n"), PromParseError);
  EXPECT_NO_THROW(parse_prometheus("# HELP gantry_a A.\n# TYPE gantry_a gauge\ngantry_a{x=\"\\n\"} -1e3\n"));
}

TEST(NodeMetrics, DescribeANodeWithLogicalAndMeasuredGpus) {
  proto::NodeStats s;
  s.set_node_id(std::string(16, '\x01'));
  s.set_hostname("box");
  (*s.mutable_total()->mutable_quantities())["CPU"] = 4 * 10000;
  (*s.mutable_available()->mutable_quantities())["CPU"] = 1 * 10000;
  s.set_store_used(10);
  s.set_store_capacity(100);
  s.set_cpu_utilization(0.25);
  s.set_memory_used(5);
  s.set_memory_total(10);
  auto* g0 = s.add_gpus();
  g0->set_index(0);
  g0->set_name("Fake H200");
  g0->set_utilization(0.87);
  g0->set_memory_used(2);
  g0->set_memory_total(4);
  auto* g1 = s.add_gpus();
  g1->set_index(1);
  g1->set_logical(true);
  g1->set_utilization(-1);
  g1->set_in_use(true);
  PrometheusText m;
  add_node_metrics(m, s);
  auto f = parse_prometheus(m.str());
  ASSERT_EQ(f["gantry_resource_used"].samples.size(), 1u);
  EXPECT_DOUBLE_EQ(f["gantry_resource_used"].samples[0].value, 3);
  EXPECT_DOUBLE_EQ(f["gantry_node_cpu_utilization_ratio"].samples[0].value, 0.25);
  ASSERT_EQ(f["gantry_gpu_utilization_ratio"].samples.size(), 1u);  // the logical GPU has no figure
  EXPECT_EQ(f["gantry_gpu_utilization_ratio"].samples[0].labels["gpu"], "0");
  ASSERT_EQ(f["gantry_gpu_info"].samples.size(), 2u);
  EXPECT_EQ(f["gantry_gpu_info"].samples[1].labels["logical"], "true");
  EXPECT_DOUBLE_EQ(f["gantry_gpu_in_use"].samples[1].value, 1);
  for (const auto& [name, family] : f) EXPECT_EQ(name.rfind("gantry_", 0), 0u) << name;
}

TEST(LoginLink, ValidOnceItsMacAndExpiryHold) {
  std::string link = make_login_link("token-1", 2000);
  std::string nonce;
  int64_t expires = 0;
  EXPECT_TRUE(check_login_link("token-1", link, 1999, &nonce, &expires));
  EXPECT_EQ(expires, 2000);
  EXPECT_EQ(nonce.size(), 32u);
  EXPECT_FALSE(check_login_link("token-1", link, 2001, &nonce, &expires));  // expired
  EXPECT_FALSE(check_login_link("token-2", link, 1999, &nonce, &expires));  // another cluster's
  std::string tampered = link;
  tampered[0] = '3';  // a later expiry, same MAC
  EXPECT_FALSE(check_login_link("token-1", tampered, 1999, &nonce, &expires));
  EXPECT_FALSE(check_login_link("token-1", "garbage", 0, &nonce, &expires));
  EXPECT_FALSE(check_login_link("token-1", "1.2", 0, &nonce, &expires));
  EXPECT_NE(make_login_link("token-1", 2000), link);  // a fresh nonce each time
}

class NodeLogsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("gantry-logs-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(NodeLogsTest, ListsTailsAndReadsFromOffsets) {
  {
    std::ofstream out(dir_ / "worker-4242.out");
    for (int i = 1; i <= 5000; ++i) out << "line " << i << "\n";
  }
  std::ofstream(dir_ / "gantry.log") << "node\n";
  std::filesystem::create_directory(dir_ / "sub");
  NodeLogs logs(dir_.string());
  auto list = logs.list();
  ASSERT_EQ(list.files_size(), 2);  // not the directory
  EXPECT_EQ(list.files(0).name(), "gantry.log");
  EXPECT_EQ(list.files(1).pid(), 4242);
  EXPECT_EQ(list.files(1).kind(), "worker-output");

  proto::ReadLogRequest req;
  req.set_name("worker-4242.out");
  req.set_offset(-1);
  req.set_tail_lines(3);
  proto::ReadLogReply reply;
  std::string error;
  ASSERT_TRUE(logs.read(req, &reply, &error)) << error;
  EXPECT_EQ(reply.text(), "line 4998\nline 4999\nline 5000\n");
  EXPECT_EQ(reply.next_offset(), reply.size());

  std::ofstream(dir_ / "worker-4242.out", std::ios::app) << "line 5001\n";
  req.set_offset(static_cast<int64_t>(reply.next_offset()));
  ASSERT_TRUE(logs.read(req, &reply, &error)) << error;
  EXPECT_EQ(reply.text(), "line 5001\n");  // follow: only what was added
}

TEST_F(NodeLogsTest, RefusesNamesOutsideItsDirectory) {
  std::ofstream(dir_.parent_path() / ("secret-" + std::to_string(::getpid()))) << "x";
  std::filesystem::create_symlink("/etc/passwd", dir_ / "link.log");
  NodeLogs logs(dir_.string());
  proto::ReadLogReply reply;
  std::string error;
  for (std::string name : {"../secret-" + std::to_string(::getpid()), std::string("/etc/passwd"), std::string(".."),
                           std::string(""), std::string("link.log"), std::string("missing.log")}) {
    proto::ReadLogRequest req;
    req.set_name(name);
    EXPECT_FALSE(logs.read(req, &reply, &error)) << name;
    EXPECT_FALSE(error.empty());
  }
  std::filesystem::remove(dir_.parent_path() / ("secret-" + std::to_string(::getpid())));
}

TEST(TaskEventLog, CountsKeepsTheNewestExecutionsAndFailures) {
  TaskEventLog log(/*capacity=*/3, /*failures_kept=*/2);
  for (int i = 0; i < 5; ++i) {
    uint64_t t = log.started(TaskId::generate(), "f", 0);
    log.ended(t, nullptr);
  }
  proto::ErrorInfo error;
  error.set_remote_type("std::runtime_error");
  error.set_message("boom");
  for (int i = 0; i < 3; ++i) {
    error.set_message("boom " + std::to_string(i));
    log.ended(log.started(TaskId::generate(), "g", 1), &error);
  }
  uint64_t running = log.started(TaskId::generate(), "h", 0);
  log.ended(log.started(TaskId::generate(), "Actor::m", 0, /*actor_call=*/true), nullptr);
  proto::TaskEventsRequest req;
  req.set_limit(100);
  proto::TaskEvents out;
  log.describe(req, &out);
  std::map<std::string, proto::ExecutedCount> counts;
  for (const auto& c : out.counts()) counts[c.name()] = c;
  EXPECT_EQ(counts["f"].finished(), 5);
  EXPECT_EQ(counts["g"].failed(), 3);
  EXPECT_EQ(counts["h"].running(), 1);
  EXPECT_EQ(out.actor_calls().finished(), 1);  // only the actor's method, not the tasks before
  EXPECT_EQ(out.actor_calls().failed(), 0);
  ASSERT_EQ(out.executions_size(), 4);  // the running one and the 3 kept
  EXPECT_EQ(out.executions(0).end_us(), 0u);
  EXPECT_EQ(out.executions(1).name(), "Actor::m");
  EXPECT_EQ(out.executions(2).name(), "g");
  EXPECT_TRUE(out.executions(2).failed());
  EXPECT_EQ(out.executions_dropped(), 6u);
  ASSERT_EQ(out.failures_size(), 2);
  EXPECT_EQ(out.failures(0).message(), "boom 2");  // newest first
  EXPECT_EQ(out.failures(1).message(), "boom 1");
  EXPECT_EQ(out.failures(0).error_type(), "std::runtime_error");
  log.ended(running, nullptr);
}

TEST(HostMonitor, ReadsMemoryAndThenCpuUse) {
  HostMonitor host(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  HostSample s = host.sample();
  EXPECT_GT(s.memory_total, 0u);
  EXPECT_LE(s.memory_used, s.memory_total);
  EXPECT_GT(s.cpu_cores, 0);
  EXPECT_GE(s.cpu_utilization, 0.0);
  EXPECT_LE(s.cpu_utilization, 1.0);
}

TEST(GpuMonitor, WithoutADriverIsUnavailableNotAnError) {
  GpuMonitor gpus("libgantry-no-such-nvml.so");
  EXPECT_FALSE(gpus.available());
  EXPECT_NE(gpus.unavailable_reason().find("libgantry-no-such-nvml.so"), std::string::npos);
  auto samples = gpus.sample({"0"});
  ASSERT_EQ(samples.size(), 1u);
  EXPECT_LT(samples[0].utilization, 0);
}

TEST(GpuMonitor, ReadsFiguresThroughTheNvmlCalls) {
  GpuMonitor gpus(FAKE_NVML_PATH);
  ASSERT_TRUE(gpus.available()) << gpus.unavailable_reason();
  auto samples = gpus.sample(node_gpu_devices(3, "GPU-fake-1,0,7"));
  ASSERT_EQ(samples.size(), 3u);
  EXPECT_EQ(samples[0].name, "Fake L4");  // by UUID, as CUDA_VISIBLE_DEVICES may name it
  EXPECT_DOUBLE_EQ(samples[0].utilization, 0.05);
  EXPECT_EQ(samples[1].name, "Fake H200");
  EXPECT_DOUBLE_EQ(samples[1].utilization, 0.87);
  EXPECT_EQ(samples[1].memory_total, 150000000000ull);
  EXPECT_EQ(samples[1].memory_used, 20000000000ull);
  EXPECT_TRUE(samples[2].name.empty());  // no device 7: unknown, not an error
  EXPECT_LT(samples[2].utilization, 0);
}

TEST(GpuMonitor, NodeDevicesFollowCudaVisibleDevices) {
  EXPECT_EQ(node_gpu_devices(2, ""), (std::vector<std::string>{"0", "1"}));
  EXPECT_EQ(node_gpu_devices(2, "3,1"), (std::vector<std::string>{"3", "1"}));
}

}  // namespace
}  // namespace gantry::internal
