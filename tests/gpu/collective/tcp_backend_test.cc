// Tests of what sets the TCP backend apart; backend_conformance_test.cc checks its ops
// against a serial reduction. Ranks are threads of this process sharing one FakeStore and
// talking TCP over 127.0.0.1, except the peer-death tests, which fork real processes that
// meet through a directory of files (and run first, before any thread exists). Intruders
// are plain sockets of the test that reach a rank's listener without the group secret.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backend_test_support.h"
#include "collective/backend.h"
#include "collective/fake_store.h"

namespace {

namespace col = gantry::collective;
using namespace gantry::collective::testing;
using col::detail::make_tcp_backend;

// ---------------------------------------------------------------------------------------
// A peer process that dies. These tests fork, so they come first: no thread exists yet.
// Plain TESTs run in the order written, so these forks happen while the process has no
// other thread.

TEST(TcpPeerDeath, SurvivorFailsPromptlySmallMessages) {
  // A few KiB: each frame whole in one write. The error names the peer that died.
  expect_survivor_fails_promptly(make_tcp_backend, 1000, {"rank 1"});
}

TEST(TcpPeerDeath, SurvivorFailsPromptlyLargeMessages) {
  expect_survivor_fails_promptly(make_tcp_backend, size_t{4} << 20, {"rank 1"});  // 16 MiB: frames cut mid-transfer
}

// ---------------------------------------------------------------------------------------
// Intruders: processes that reach a rank's listening socket without the group secret.

// A blocking TCP connection to "ip:port" (IPv4), with 10 s send and receive timeouts;
// -1 when it cannot connect.
int connect_to(const std::string& address) {
  size_t colon = address.rfind(':');
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (::inet_pton(AF_INET, address.substr(0, colon).c_str(), &to.sin_addr) != 1) return -1;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval limit{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool write_all(int fd, const void* data, size_t bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

bool read_exactly(int fd, void* data, size_t bytes) {
  auto* p = static_cast<uint8_t*>(data);
  while (bytes > 0) {
    ssize_t n = ::recv(fd, p, bytes, 0);
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

// Whether the other end closes `fd` (EOF or reset) within `limit`; reads and drops
// whatever arrives before.
bool closed_within(int fd, std::chrono::milliseconds limit) {
  auto deadline = Clock::now() + limit;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    uint8_t buffer[256];
    ssize_t n = ::recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return true;
  }
}

size_t count_of(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// Builds the `world` ranks of one group on threads started one by one.
class GroupBuilder {
 public:
  GroupBuilder(std::string name, int world, std::shared_ptr<Store> store, std::chrono::milliseconds op_timeout)
      : name_(std::move(name)), world_(world), store_(std::move(store)), op_timeout_(op_timeout), group_(world) {}
  ~GroupBuilder() { finish(); }

  void start(int rank) {
    threads_.emplace_back([this, rank] {
      try {
        group_[rank] = make_tcp_backend(context_for(name_, rank, world_, store_, op_timeout_));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "rank " << rank << " failed to join: " << e.what();
      }
    });
  }
  Group& finish() {
    for (auto& t : threads_) t.join();
    threads_.clear();
    return group_;
  }

 private:
  std::string name_;
  int world_;
  std::shared_ptr<Store> store_;
  std::chrono::milliseconds op_timeout_;
  Group group_;
  std::vector<std::thread> threads_;
};

void expect_allreduce_works(Group& group) {
  const int world = static_cast<int>(group.size());
  on_every_rank(group, [&](int rank, Backend& backend) {
    Bytes data = make_input(rank, 1001, DataType::kInt32);
    backend.allreduce(data.data(), 1001, DataType::kInt32, ReduceOp::kSum);
    expect_elements(data, expected_reduction(1001, DataType::kInt32, ReduceOp::kSum, world), DataType::kInt32,
                    describe("allreduce", DataType::kInt32, ReduceOp::kSum, 1001, rank, world));
    backend.barrier();
  });
}

// While rank 0 waits for its peers, three strangers connect to it: one sends an HTTP
// request, one answers the challenge as "rank 1" without the secret, one says nothing.
// The first two are refused at once; the real ranks then join while the silent one still
// sits in its handshake, and it is refused when the group forms.
TEST(TcpIntruders, AreRefusedWhileTheGroupFormsAndChangeNothing) {
  const int world = 3;
  auto store = std::make_shared<FakeStore>();
  ::testing::internal::CaptureStderr();
  GroupBuilder builder("intruded", world, store, 20s);
  builder.start(0);
  const std::string address = store->get("tcp/addr/0", 10s);
  int garbage = connect_to(address);
  int wrong_mac = connect_to(address);
  int silent = connect_to(address);
  ASSERT_GE(garbage, 0);
  ASSERT_GE(wrong_mac, 0);
  ASSERT_GE(silent, 0);

  std::string request = "GET / HTTP/1.1\r\nHost: gantry\r\nX-Padding: " + std::string(100, 'x') + "\r\n\r\n";
  EXPECT_TRUE(write_all(garbage, request.data(), request.size()));
  uint8_t challenge[32];
  ASSERT_TRUE(read_exactly(wrong_mac, challenge, sizeof challenge)) << "rank 0 sent no challenge";
  uint8_t response[4 + 32 + 32] = {1, 0, 0, 0};  // "rank 1", a nonce and a MAC made up without the secret
  for (size_t i = 4; i < sizeof response; ++i) response[i] = static_cast<uint8_t>(i * 37 + challenge[i % 32]);
  EXPECT_TRUE(write_all(wrong_mac, response, sizeof response));
  EXPECT_TRUE(closed_within(garbage, 5s)) << "the HTTP request was not refused";
  EXPECT_TRUE(closed_within(wrong_mac, 5s)) << "the wrong MAC was not refused";

  auto join_start = Clock::now();
  builder.start(1);
  builder.start(2);
  Group& group = builder.finish();
  const long join_ms = elapsed_ms(join_start);
  EXPECT_TRUE(closed_within(silent, 2s)) << "the silent connection outlived the join";
  const std::string log = ::testing::internal::GetCapturedStderr();
  std::cout << log;
  // The silent stranger would hold a serial acceptor for its 5 s handshake limit.
  EXPECT_LT(join_ms, 4000) << "the real ranks waited behind the intruders";
  EXPECT_EQ(count_of(log, "refused a collective connection from"), 3u) << log;
  EXPECT_CONTAINS(log, "sent more bytes than a handshake");
  EXPECT_CONTAINS(log, "wrong MAC for rank 1");
  EXPECT_CONTAINS(log, "the group formed before it completed a handshake");
  EXPECT_CONTAINS(log, "tcp group 'intruded' rank 0 of 3");
  ::close(garbage);
  ::close(wrong_mac);
  ::close(silent);

  expect_allreduce_works(group);
  // The listener closed once the group formed: nobody can reach the rank any more.
  int late = connect_to(address);
  EXPECT_LT(late, 0) << "rank 0 still accepts connections after the join";
  if (late >= 0) ::close(late);
}

// A connection that sends nothing is refused after 5 s, and the group still forms after it.
TEST(TcpIntruders, SilentConnectionIsRefusedAfterFiveSeconds) {
  auto store = std::make_shared<FakeStore>();
  ::testing::internal::CaptureStderr();
  GroupBuilder builder("silence", 2, store, 20s);
  builder.start(0);
  int silent = connect_to(store->get("tcp/addr/0", 10s));
  ASSERT_GE(silent, 0);
  auto start = Clock::now();
  EXPECT_TRUE(closed_within(silent, 9s));
  const long refused_ms = elapsed_ms(start);
  EXPECT_GE(refused_ms, 4500);
  ::close(silent);
  builder.start(1);
  Group& group = builder.finish();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(count_of(log, "refused a collective connection from"), 1u) << log;
  EXPECT_CONTAINS(log, "sent no complete handshake within 5000 ms");
  expect_allreduce_works(group);
}

// A member that answers with another group's secret is refused too: the secret, not the
// protocol, is what admits a rank.
TEST(TcpIntruders, ARankWithAnotherSecretCannotJoin) {
  auto store = std::make_shared<FakeStore>();
  auto other = std::make_shared<FakeStore>();
  ::testing::internal::CaptureStderr();
  GroupBuilder builder("secret", 2, store, 20s);
  builder.start(0);
  // A rank 1 whose store holds another secret, pointed at this group's rank 0. It redials
  // after each refusal until its join bound.
  other->set("tcp/secret", std::string(64, '7'));
  other->set("tcp/addr/0", store->get("tcp/addr/0", 10s));
  std::string impostor_error;
  try {
    make_tcp_backend(context_for("other", 1, 2, other, 1000ms));
    ADD_FAILURE() << "a rank with another secret joined";
  } catch (const CollectiveError& e) {
    impostor_error = e.what();
  }
  builder.start(1);
  Group& group = builder.finish();
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_CONTAINS(impostor_error, "group 'other' rank 1");
  EXPECT_CONTAINS(impostor_error, "closed the connection during the handshake");
  EXPECT_CONTAINS(log, "wrong MAC for rank 1");
  expect_allreduce_works(group);
}

// ---------------------------------------------------------------------------------------
// Failures: abort, timeouts, mismatched ops, a peer that leaves, bad arguments.

TEST(TcpBackend, AbortFailsLaterOpsAtOnceAndThePeerPromptly) {
  EXPECT_CONTAINS(expect_abort_fails_later_ops_and_the_peer(make_tcp_backend), "rank 0 closed its connection");
}

TEST(TcpBackend, AbortInterruptsAWaitingRecv) { expect_abort_interrupts_a_waiting_recv(make_tcp_backend); }

TEST(TcpBackend, AbortInterruptsALargeAllreduceOnEveryRank) {
  expect_abort_interrupts_a_large_allreduce(make_tcp_backend, 3);
}

TEST(TcpBackend, OpTimeoutIsACollectiveError) {
  EXPECT_CONTAINS(expect_op_timeout_is_a_collective_error(make_tcp_backend),
                  "timed out after 300 ms waiting for rank 1");
}

TEST(TcpBackend, RanksCallingDifferentSizesGetACollectiveError) {
  Group group = make_group(make_tcp_backend, "sizes", 2, 30s);
  std::vector<std::string> errors(2);
  auto start = Clock::now();
  on_every_rank(group, [&](int rank, Backend& backend) {
    std::vector<float> data(100 + rank, 1.0f);  // rank 1 calls with one element more
    try {
      backend.allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "rank " << rank << ": mismatched allreduce succeeded";
    } catch (const CollectiveError& e) {
      errors[rank] = e.what();
    }
  });
  EXPECT_LT(elapsed_ms(start), 5000);
  const std::string both = errors[0] + "\n" + errors[1];
  EXPECT_CONTAINS(both, "the ranks called different ops or sizes");
  // The frame of a 2-rank allreduce carries both halves of the ring: 50 + 50 floats on rank
  // 0, 50 + 51 on rank 1. Whichever rank reads the other's header first reports it.
  const bool rank0_saw = both.find(
                             "rank 1 sent allreduce frame #0 of 404 bytes where this rank expected allreduce "
                             "frame #0 of 400 bytes") != std::string::npos;
  const bool rank1_saw = both.find(
                             "rank 0 sent allreduce frame #0 of 400 bytes where this rank expected allreduce "
                             "frame #0 of 404 bytes") != std::string::npos;
  EXPECT_TRUE(rank0_saw || rank1_saw) << both;
}

TEST(TcpBackend, RanksCallingDifferentOpsGetACollectiveError) {
  Group group = make_group(make_tcp_backend, "ops", 2, 30s);
  std::string error;
  on_every_rank(group, [&](int rank, Backend& backend) {
    std::vector<float> data(10, 1.0f);
    if (rank == 0) {
      // A broadcast from rank 0 only sends, so it may complete; the next op cannot.
      try {
        backend.broadcast(data.data(), data.size(), DataType::kFloat32, 0);
        backend.barrier();
        ADD_FAILURE() << "rank 0 went on after the mismatch";
      } catch (const CollectiveError&) {
      }
      return;
    }
    try {
      backend.allreduce(data.data(), data.size(), DataType::kFloat32, ReduceOp::kSum);
      ADD_FAILURE() << "allreduce against a broadcast succeeded";
    } catch (const CollectiveError& e) {
      error = e.what();
    }
  });
  EXPECT_CONTAINS(error, "rank 0 sent broadcast frame #0 of 40 bytes where this rank expected allreduce frame #0");
}

// The survivors learn of the leaver when they next need it, with no delay.
TEST(TcpBackend, PeerThatLeftFailsOnlyTheOpsThatNeedIt) {
  expect_a_peer_that_left_fails_only_the_ops_that_need_it(make_tcp_backend, 0ms);
}

TEST(TcpBackend, BadRankArgumentsThrowWithoutBreakingTheGroup) {
  expect_bad_rank_arguments_leave_the_group_working(make_tcp_backend);
}

TEST(TcpBackend, JoinFailsWhenAPeerNeverComes) {
  EXPECT_CONTAINS(expect_join_fails_when_a_peer_never_comes(make_tcp_backend), "no connection from rank(s) 1");
}

TEST(TcpBackend, KindIsTcp) {
  Group group = make_group(make_tcp_backend, "kind", 1);
  ASSERT_TRUE(group[0]);
  EXPECT_EQ(group[0]->kind(), col::BackendKind::kTcp);
  EXPECT_STREQ(col::to_string(col::BackendKind::kTcp), "tcp");
}

}  // namespace
