// What the tests of the collective backends share: the inputs every rank contributes and the
// serial reductions they must give, element helpers for every DataType, groups whose ranks
// are threads of the test meeting through a FakeStore, a file-based Store for forked ranks,
// the fork-and-SIGKILL peer-death harness, and the failure checks that the host backends
// (Gloo, TCP) share. Each group is built by a BackendFactory, so one check serves every
// backend.
//
// Header-only, and it needs nothing beyond gtest, POSIX and gpu/src/collective's headers, so
// that nccl_backend_test.cc still builds without CUDA headers.

#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "collective/backend.h"
#include "collective/fake_store.h"
#include "collective/reduce_kernels.h"

/// Expects `part` somewhere in `text` (each evaluated once, anything convertible to
/// std::string); on failure prints both. More context can be streamed in with <<.
#define EXPECT_CONTAINS(text, part) EXPECT_PRED_FORMAT2(::gantry::collective::testing::assert_contains, text, part)

namespace gantry::collective::testing {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
// Re-exported, so that `using namespace gantry::collective::testing` is all a test needs.
using collective::CollectiveError;
using collective::DataType;
using collective::ReduceOp;
using detail::Backend;
using detail::BackendContext;
using detail::FakeStore;
using detail::Store;

/// Builds rank `context.rank`'s backend; blocks until every rank of the group has joined.
/// `make_gloo_backend`, `make_tcp_backend` and `make_shm_backend` are factories.
using BackendFactory = std::function<std::unique_ptr<Backend>(const BackendContext&)>;

/// The predicate of EXPECT_CONTAINS.
inline ::testing::AssertionResult assert_contains(const char* text_expression, const char* part_expression,
                                                  const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << text_expression << " lacks " << part_expression << ":\n  '" << text
                                       << "'\n  lacks '" << part << "'";
}

inline long elapsed_ms(Clock::time_point since) {
  return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count());
}

inline double seconds_since(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// ---- Inputs, element helpers and the serial reference ------------------------------------

inline constexpr DataType kAllTypes[] = {DataType::kFloat32,  DataType::kFloat64, DataType::kFloat16,
                                         DataType::kBFloat16, DataType::kInt32,   DataType::kInt64,
                                         DataType::kUInt8};
inline constexpr ReduceOp kAllOps[] = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax,
                                       ReduceOp::kProduct};
/// Element counts of the conformance checks: 37 and 1001 are odd and divisible by none of 2, 3, 4.
inline constexpr size_t kCounts[] = {0, 1, 37, 1001};
/// About a million elements: several segments per rank of a ring, many staging and socket
/// buffers' worth per step.
inline constexpr size_t kLargeCount = size_t{1} << 20;

/// `acc` combined with `v` by `op`, in T's arithmetic; kAvg combines as kSum (divide after).
template <typename T>
T combine(T acc, T v, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return static_cast<T>(acc + v);
    case ReduceOp::kProduct:
      return static_cast<T>(acc * v);
    case ReduceOp::kMin:
      return v < acc ? v : acc;
    case ReduceOp::kMax:
      return acc < v ? v : acc;
  }
  return acc;
}

/// Element `index` of rank `rank`'s input: a small integer (in [-4, 4], or [0, 8] for
/// uint8), so every reduction over up to four ranks is exact in every type, in any order.
inline int input_value(int rank, size_t index, DataType type) {
  int v = static_cast<int>((static_cast<size_t>(rank) * 7 + index * 13) % 9) - 4;
  return type == DataType::kUInt8 ? v + 4 : v;
}

/// Element i of a `type` array at `base`, written from and read as a double.
inline void store_value(void* base, size_t i, DataType type, double v) {
  switch (type) {
    case DataType::kFloat32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      return;
    case DataType::kFloat64:
      static_cast<double*>(base)[i] = v;
      return;
    case DataType::kFloat16:
      static_cast<uint16_t*>(base)[i] = detail::float_to_half(static_cast<float>(v));
      return;
    case DataType::kBFloat16:
      static_cast<uint16_t*>(base)[i] = detail::float_to_bfloat16(static_cast<float>(v));
      return;
    case DataType::kInt32:
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v);
      return;
    case DataType::kInt64:
      static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v);
      return;
    case DataType::kUInt8:
      static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v);
      return;
  }
}

inline double load_value(const void* base, size_t i, DataType type) {
  switch (type) {
    case DataType::kFloat32:
      return static_cast<const float*>(base)[i];
    case DataType::kFloat64:
      return static_cast<const double*>(base)[i];
    case DataType::kFloat16:
      return detail::half_to_float(static_cast<const uint16_t*>(base)[i]);
    case DataType::kBFloat16:
      return detail::bfloat16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DataType::kInt32:
      return static_cast<const int32_t*>(base)[i];
    case DataType::kInt64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DataType::kUInt8:
      return static_cast<const uint8_t*>(base)[i];
  }
  return 0;
}

using Bytes = std::vector<uint8_t>;

/// Elements first..first+count of rank `rank`'s input.
inline Bytes make_input(int rank, size_t count, DataType type, size_t first = 0) {
  Bytes out(count * element_size(type));
  for (size_t i = 0; i < count; ++i) store_value(out.data(), i, type, input_value(rank, first + i, type));
  return out;
}

/// Input element `index` of ranks 0..world-1 combined in rank order, in T.
template <typename T>
T serial_reduce(ReduceOp op, int world, size_t index, DataType type) {
  T acc = static_cast<T>(input_value(0, index, type));
  for (int r = 1; r < world; ++r) acc = combine(acc, static_cast<T>(input_value(r, index, type)), op);
  return acc;
}

/// Stores at out[i] what reducing input element `index` of ranks 0..world-1 must give: the
/// serial reduction, in the type's arithmetic (float32 for the half types), done here.
/// Floating types fold in double, exact for these inputs, and keeping the sign of a zero
/// product (0 * -3 is -0).
inline void store_expected(void* out, size_t i, DataType type, ReduceOp op, int world, size_t index) {
  const bool avg = op == ReduceOp::kAvg;
  switch (type) {
    case DataType::kFloat32:
    case DataType::kFloat16:
    case DataType::kBFloat16: {
      auto x = static_cast<float>(serial_reduce<double>(op, world, index, type));
      if (avg) x /= static_cast<float>(world);
      store_value(out, i, type, x);
      return;
    }
    case DataType::kFloat64: {
      double x = serial_reduce<double>(op, world, index, type);
      if (avg) x /= world;
      static_cast<double*>(out)[i] = x;
      return;
    }
    default:
      break;
  }
  int64_t acc = serial_reduce<int64_t>(op, world, index, type);
  switch (type) {
    case DataType::kInt32: {
      int32_t x = static_cast<int32_t>(acc);
      if (avg) x /= world;
      static_cast<int32_t*>(out)[i] = x;
      return;
    }
    case DataType::kInt64: {
      int64_t x = acc;
      if (avg) x /= world;
      static_cast<int64_t*>(out)[i] = x;
      return;
    }
    case DataType::kUInt8: {
      auto x = static_cast<uint8_t>(acc & 0xff);  // uint8 arithmetic wraps
      if (avg) x = static_cast<uint8_t>(x / world);
      static_cast<uint8_t*>(out)[i] = x;
      return;
    }
    default:
      return;
  }
}

/// What the elements first..first+count of a reduction over `world` ranks must be.
inline Bytes expected_reduction(size_t count, DataType type, ReduceOp op, int world, size_t first = 0) {
  Bytes out(count * element_size(type));
  for (size_t i = 0; i < count; ++i) store_expected(out.data(), i, type, op, world, first + i);
  return out;
}

/// The blocks of ranks 0..world-1's inputs, in rank order: what an allgather gives.
inline Bytes gathered_inputs(int world, size_t count, DataType type) {
  Bytes out;
  for (int r = 0; r < world; ++r) {
    Bytes block = make_input(r, count, type);
    out.insert(out.end(), block.begin(), block.end());
  }
  return out;
}

/// "allreduce float32 sum count 37 rank 1 of 3", for failure messages.
inline std::string describe(const char* op_name, DataType type, std::optional<ReduceOp> op, size_t count, int rank,
                            int world) {
  std::ostringstream s;
  s << op_name << " " << to_string(type);
  if (op) s << " " << to_string(*op);
  s << " count " << count << " rank " << rank << " of " << world;
  return s.str();
}

/// Element-by-element (bit for bit) comparison; reports the first difference only.
inline void expect_elements(const Bytes& actual, const Bytes& expected, DataType type, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  const size_t size = element_size(type);
  for (size_t i = 0; i < actual.size() / size; ++i) {
    if (std::memcmp(actual.data() + i * size, expected.data() + i * size, size) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << load_value(actual.data(), i, type) << ", expected "
                    << load_value(expected.data(), i, type);
      return;
    }
  }
}

// ---- Groups of threads ---------------------------------------------------------------------

/// Rank `rank` of a group of `world` on this host (every rank on node "0a", 127.0.0.1).
inline BackendContext context_for(const std::string& group, int rank, int world, std::shared_ptr<Store> store,
                                  std::chrono::milliseconds op_timeout) {
  BackendContext context;
  context.group = group;
  context.rank = rank;
  context.world_size = world;
  context.store = std::move(store);
  context.op_timeout = op_timeout;
  context.node_ids.assign(world, "0a");
  context.node_ips.assign(world, "127.0.0.1");
  return context;
}

/// One backend per rank; an entry is null where that rank failed to join.
using Group = std::vector<std::unique_ptr<Backend>>;

/// Builds `world` backends with build(rank), each on its own thread (building blocks until
/// every rank has joined). A rank that throws adds a test failure and stays null.
inline Group build_on_threads(int world, const std::function<std::unique_ptr<Backend>(int)>& build) {
  Group group(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        group[static_cast<size_t>(r)] = build(r);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << " failed to join: " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return group;
}

/// The `world` backends of group `name`, meeting through one FakeStore.
inline Group make_group(const BackendFactory& factory, const std::string& name, int world,
                        std::chrono::milliseconds op_timeout = 30s) {
  auto store = std::make_shared<FakeStore>();
  return build_on_threads(world, [&](int r) { return factory(context_for(name, r, world, store, op_timeout)); });
}

/// Runs body(rank, backend) on one thread per rank; an exception fails the test.
inline void on_every_rank(Group& group, const std::function<void(int, Backend&)>& body) {
  for (auto& backend : group) ASSERT_NE(backend, nullptr) << "the group did not form";
  std::vector<std::thread> threads;
  for (int r = 0; r < static_cast<int>(group.size()); ++r) {
    threads.emplace_back([&, r] {
      try {
        body(r, *group[static_cast<size_t>(r)]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << r << " threw: " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
}

// ---- Ranks as forked processes -------------------------------------------------------------

/// A Store over a directory: one file per key, written whole by rename; get polls. Enough
/// for processes of one machine in a test; `add` takes a lock file.
class FileStore final : public Store {
 public:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {}

  void set(const std::string& key, const std::string& value) override {
    std::string tmp = path(key) + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(value.data(), static_cast<std::streamsize>(value.size()));
    }
    std::filesystem::rename(tmp, path(key));
  }
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      std::ifstream in(path(key), std::ios::binary);
      if (in) return std::string(std::istreambuf_iterator<char>(in), {});
      if (Clock::now() >= deadline) throw CollectiveError("file store: key '" + key + "' not set in time");
      std::this_thread::sleep_for(1ms);
    }
  }
  int64_t add(const std::string& key, int64_t delta) override {
    int fd = ::open((path(key) + ".lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) throw CollectiveError("file store: cannot lock '" + key + "'");
    ::flock(fd, LOCK_EX);
    int64_t value = 0;
    {
      std::ifstream in(path(key));
      in >> value;
    }
    value += delta;
    set(key, std::to_string(value));
    ::close(fd);  // releases the lock
    return value;
  }

 private:
  std::string path(const std::string& key) const {
    std::string name = key;
    std::replace(name.begin(), name.end(), '/', '%');
    return dir_ + "/" + name;
  }
  std::string dir_;
};

/// A fresh directory under /tmp named after `prefix`, removed with everything in it when
/// this goes out of scope. Empty path() when it could not be made.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix) {
    std::string name = "/tmp/" + prefix + ".XXXXXX";
    if (::mkdtemp(name.data()) != nullptr) path_ = name;
  }
  ~TempDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

/// Waits up to `limit` for child `pid` to end; returns its wait status, or nothing (after
/// killing it) when it is still running.
inline std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds limit) {
  auto deadline = Clock::now() + limit;
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(1ms);
  }
}

namespace peer_death {

// Exit codes of the forked ranks.
inline constexpr int kGotCollectiveError = 0;
inline constexpr int kNeverFailed = 2;
inline constexpr int kOtherFailure = 3;

// Rank 1: three good allreduces, then SIGKILLs itself from a second thread while its main
// thread is inside the next allreduces.
[[noreturn]] inline void run_victim(const BackendFactory& factory, const std::string& dir, size_t count) {
  try {
    auto backend = factory(context_for("death", 1, 2, std::make_shared<FileStore>(dir), 120s));
    std::vector<float> data(count);
    for (int round = 0; round < 3; ++round) {
      std::fill(data.begin(), data.end(), 1.0f);
      backend->allreduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum);
    }
    std::thread([] {
      std::this_thread::sleep_for(3ms);
      ::raise(SIGKILL);
    }).detach();
    for (;;) backend->allreduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum);
  } catch (...) {
  }
  ::_exit(kOtherFailure);
}

// Rank 0: allreduces until one fails; writes to dir/result how long that op took and the
// error.
[[noreturn]] inline void run_survivor(const BackendFactory& factory, const std::string& dir, size_t count) {
  int code = kNeverFailed;
  std::string report;
  try {
    auto backend = factory(context_for("death", 0, 2, std::make_shared<FileStore>(dir), 120s));
    std::vector<float> data(count);
    for (int round = 0; round < 100000; ++round) {
      std::fill(data.begin(), data.end(), 1.0f);
      auto start = Clock::now();
      try {
        backend->allreduce(data.data(), count, DataType::kFloat32, ReduceOp::kSum);
      } catch (const CollectiveError& e) {
        code = kGotCollectiveError;
        report = std::to_string(elapsed_ms(start)) + "\n" + e.what();
        break;
      }
      if (round < 3 && data[count - 1] != 2.0f) {
        code = kOtherFailure;
        report = "wrong sum before the kill";
        break;
      }
    }
  } catch (const std::exception& e) {
    code = kOtherFailure;
    report = std::string("unexpected: ") + e.what();
  }
  std::ofstream(dir + "/result") << report;
  ::_exit(code);
}

}  // namespace peer_death

/// Forks a survivor (rank 0) and a victim (rank 1) of group 'death' that allreduce `count`
/// floats until the victim SIGKILLs itself; the survivor must fail with a CollectiveError
/// within 5 s (not at its 120 s op timeout) that names the group, its rank and the op, and
/// contains each of `also_expected`. Call it before the test process starts any thread.
inline void expect_survivor_fails_promptly(const BackendFactory& factory, size_t count,
                                           std::initializer_list<const char*> also_expected = {}) {
  using namespace peer_death;
  TempDir dir("collective_peer_death");
  ASSERT_FALSE(dir.path().empty()) << "mkdtemp failed";

  pid_t survivor = ::fork();
  ASSERT_GE(survivor, 0);
  if (survivor == 0) run_survivor(factory, dir.path(), count);
  pid_t victim = ::fork();
  if (victim == 0) run_victim(factory, dir.path(), count);
  ASSERT_GE(victim, 0);

  std::optional<int> victim_status = wait_child(victim, 60s);
  auto killed_at = Clock::now();
  ASSERT_TRUE(victim_status.has_value()) << "the victim never died";
  EXPECT_TRUE(WIFSIGNALED(*victim_status) && WTERMSIG(*victim_status) == SIGKILL)
      << "the victim ended without its SIGKILL, status " << *victim_status;

  // Liveness, not speed: the survivor must not sit until the 120 s op timeout.
  std::optional<int> survivor_status = wait_child(survivor, 5s);
  const long detect_ms = elapsed_ms(killed_at);
  ASSERT_TRUE(survivor_status.has_value()) << "the survivor did not fail within 5 s of the peer's death";
  std::ifstream in(dir.path() + "/result");
  std::string op_ms, message;
  std::getline(in, op_ms);
  std::getline(in, message, '\0');
  ASSERT_TRUE(WIFEXITED(*survivor_status)) << "survivor status " << *survivor_status;
  ASSERT_EQ(WEXITSTATUS(*survivor_status), kGotCollectiveError) << op_ms << " " << message;
  EXPECT_CONTAINS(message, "group 'death'");
  EXPECT_CONTAINS(message, "rank 0");
  EXPECT_CONTAINS(message, "allreduce");
  for (const char* part : also_expected) EXPECT_CONTAINS(message, part);
  std::cout << "[ info ] survivor failed " << detect_ms << " ms after the peer's death; its last op took " << op_ms
            << " ms: " << message << "\n";
}

// ---- Failures every host backend handles alike ---------------------------------------------

/// After one good allreduce, rank 0 of group 'aborted' (2 ranks, 60 s op timeout) aborts
/// twice: its later ops fail at once with the first reason, the group, the rank and the
/// op, and rank 1's next allreduce fails within 5 s. Returns rank 1's error.
inline std::string expect_abort_fails_later_ops_and_the_peer(const BackendFactory& factory) {
  Group group = make_group(factory, "aborted", 2, 60s);
  on_every_rank(group, [&](int, Backend& backend) {
    float x = 1;
    backend.allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    EXPECT_EQ(x, 2.0f);
  });
  if (!group[0] || !group[1]) return {};
  group[0]->abort("stopped by the test");
  group[0]->abort("a second abort changes nothing");
  for (int i = 0; i < 2; ++i) {
    float x = 1;
    auto start = Clock::now();
    try {
      group[0]->allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "allreduce after abort succeeded";
    } catch (const CollectiveError& e) {
      EXPECT_CONTAINS(e.what(), "stopped by the test");
      EXPECT_CONTAINS(e.what(), "group 'aborted'");
      EXPECT_CONTAINS(e.what(), "rank 0");
      EXPECT_CONTAINS(e.what(), "allreduce");
    }
    EXPECT_LT(elapsed_ms(start), 100);
  }
  // Rank 1 did nothing wrong; its next op fails because rank 0 shut its connections down,
  // long before the 60 s op timeout.
  auto start = Clock::now();
  float x = 1;
  std::string peer_error;
  try {
    group[1]->allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    ADD_FAILURE() << "the peer's allreduce succeeded";
  } catch (const CollectiveError& e) {
    peer_error = e.what();
    EXPECT_CONTAINS(peer_error, "rank 1");
    EXPECT_CONTAINS(peer_error, "allreduce");
  }
  EXPECT_LT(elapsed_ms(start), 5000);
  return peer_error;
}

/// An abort from another thread ends a recv that waits for a message never sent, within 3 s.
inline void expect_abort_interrupts_a_waiting_recv(const BackendFactory& factory) {
  Group group = make_group(factory, "abort-recv", 2, 60s);
  ASSERT_TRUE(group[0] && group[1]);
  std::thread aborter([&] {
    std::this_thread::sleep_for(200ms);
    group[0]->abort("interrupted by the test");
  });
  auto start = Clock::now();
  float x = 0;
  try {
    group[0]->recv(&x, 1, DataType::kFloat32, 1);  // rank 1 never sends
    ADD_FAILURE() << "recv returned";
  } catch (const CollectiveError& e) {
    EXPECT_CONTAINS(e.what(), "interrupted by the test");
    EXPECT_CONTAINS(e.what(), "recv");
  }
  aborter.join();
  EXPECT_LT(elapsed_ms(start), 3000);
}

/// Rank 1 of `world` aborts in the middle of a 32 MiB allreduce: every rank's allreduce
/// fails within 5 s, rank 1's with the abort's reason.
inline void expect_abort_interrupts_a_large_allreduce(const BackendFactory& factory, int world) {
  Group group = make_group(factory, "abort-large", world, 60s);
  for (auto& backend : group) ASSERT_NE(backend, nullptr) << "the group did not form";
  std::atomic<int> rounds{0};
  std::thread aborter([&] {
    while (rounds.load() < 2) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(5ms);  // inside a later allreduce
    group[1]->abort("aborted mid-allreduce");
  });
  std::vector<long> failed_after(static_cast<size_t>(world), -1);
  on_every_rank(group, [&](int rank, Backend& backend) {
    std::vector<float> data(8u << 20, 1.0f);
    for (int round = 0; round < 1000; ++round) {
      auto start = Clock::now();
      try {
        backend.allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      } catch (const CollectiveError& e) {
        failed_after[static_cast<size_t>(rank)] = elapsed_ms(start);
        if (rank == 1) {
          EXPECT_CONTAINS(e.what(), "aborted mid-allreduce");
        }
        return;
      }
      if (rank == 0) rounds.fetch_add(1);
    }
  });
  aborter.join();
  for (int rank = 0; rank < world; ++rank) {
    EXPECT_GE(failed_after[static_cast<size_t>(rank)], 0) << "rank " << rank << " never failed";
    EXPECT_LT(failed_after[static_cast<size_t>(rank)], 5000) << "rank " << rank;
  }
}

/// A recv from a rank that never sends fails after the 300 ms op timeout (not before 250
/// ms, within 5 s), naming the group, the rank and the op. Returns the error.
inline std::string expect_op_timeout_is_a_collective_error(const BackendFactory& factory) {
  Group group = make_group(factory, "timeout", 2, 300ms);
  if (!group[0] || !group[1]) return {};
  auto start = Clock::now();
  float x = 0;
  std::string error;
  try {
    group[0]->recv(&x, 1, DataType::kFloat32, 1);
    ADD_FAILURE() << "recv returned";
  } catch (const CollectiveError& e) {
    error = e.what();
    EXPECT_CONTAINS(error, "group 'timeout' rank 0");
    EXPECT_CONTAINS(error, "recv");
  }
  EXPECT_GE(elapsed_ms(start), 250);
  EXPECT_LT(elapsed_ms(start), 5000);
  return error;
}

/// Rank 2 of 3 leaves (its backend destroyed); after `settle`, ranks 0 and 1 still send
/// and receive between themselves, and an allreduce, which needs rank 2, fails on both
/// within 5 s (not at the 60 s op timeout).
inline void expect_a_peer_that_left_fails_only_the_ops_that_need_it(const BackendFactory& factory,
                                                                    std::chrono::milliseconds settle) {
  Group group = make_group(factory, "leaver", 3, 60s);
  on_every_rank(group, [&](int rank, Backend& backend) {
    int32_t x = rank;
    backend.allreduce(&x, 1, DataType::kInt32, ReduceOp::kSum);
    EXPECT_EQ(x, 3);
  });
  ASSERT_TRUE(group[0] && group[1]);
  group[2].reset();
  std::this_thread::sleep_for(settle);
  std::thread sender([&] {
    int64_t v = 42;
    EXPECT_NO_THROW(group[0]->send(&v, 1, DataType::kInt64, 1));
  });
  int64_t got = 0;
  EXPECT_NO_THROW(group[1]->recv(&got, 1, DataType::kInt64, 0));
  sender.join();
  EXPECT_EQ(got, 42);
  std::vector<std::string> errors(2);
  group.resize(2);
  auto start = Clock::now();
  on_every_rank(group, [&](int rank, Backend& backend) {
    int32_t x = 1;
    try {
      backend.allreduce(&x, 1, DataType::kInt32, ReduceOp::kSum);
      ADD_FAILURE() << "rank " << rank << ": allreduce without rank 2 succeeded";
    } catch (const CollectiveError& e) {
      errors[static_cast<size_t>(rank)] = e.what();
    }
  });
  EXPECT_LT(elapsed_ms(start), 5000);
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_CONTAINS(errors[static_cast<size_t>(rank)], "group 'leaver' rank " + std::to_string(rank));
    EXPECT_CONTAINS(errors[static_cast<size_t>(rank)], "allreduce");
  }
}

/// A root, peer or source rank outside the group (or this rank itself as a peer) throws
/// CollectiveError, and the group still works afterwards.
inline void expect_bad_rank_arguments_leave_the_group_working(const BackendFactory& factory) {
  Group group = make_group(factory, "arguments", 2);
  on_every_rank(group, [&](int rank, Backend& backend) {
    float x = 1;
    EXPECT_THROW(backend.broadcast(&x, 1, DataType::kFloat32, 2), CollectiveError);
    EXPECT_THROW(backend.reduce(&x, 1, DataType::kFloat32, ReduceOp::kSum, -1), CollectiveError);
    EXPECT_THROW(backend.send(&x, 1, DataType::kFloat32, rank), CollectiveError);
    EXPECT_THROW(backend.recv(&x, 1, DataType::kFloat32, 5), CollectiveError);
    backend.allreduce(&x, 1, DataType::kFloat32, ReduceOp::kSum);
    EXPECT_EQ(x, 2.0f);
  });
}

/// Rank 0 of 2 joins alone: joining fails within 5 s (300 ms op timeout), naming the group,
/// the rank and the join. Returns the error.
inline std::string expect_join_fails_when_a_peer_never_comes(const BackendFactory& factory) {
  auto store = std::make_shared<FakeStore>();
  auto start = Clock::now();
  std::string error;
  try {
    factory(context_for("lonely", 0, 2, store, 300ms));
    ADD_FAILURE() << "joined without the peer";
  } catch (const CollectiveError& e) {
    error = e.what();
    EXPECT_CONTAINS(error, "group 'lonely' rank 0");
    EXPECT_CONTAINS(error, "join");
  }
  EXPECT_LT(elapsed_ms(start), 5000);
  return error;
}

}  // namespace gantry::collective::testing
