// Tests of what sets the Gloo backend apart; backend_conformance_test.cc checks its ops
// against a serial reduction. Ranks are threads of this process sharing one FakeStore and
// talking TCP over 127.0.0.1, except the peer-death tests, which fork real processes that
// meet through a directory of files (and run first, before any thread exists).

#include <gtest/gtest.h>

#include <chrono>

#include "backend_test_support.h"
#include "collective/backend.h"

namespace {

namespace col = gantry::collective;
using namespace gantry::collective::testing;
using col::detail::make_gloo_backend;

// ---------------------------------------------------------------------------------------
// A peer process that dies. These tests fork, so they come first: no thread exists yet.
// Plain TESTs run in the order written, so these forks happen while the process has no
// other thread.

TEST(GlooPeerDeath, SurvivorFailsPromptlySmallMessages) {
  expect_survivor_fails_promptly(make_gloo_backend, 1000);  // a few KiB: each message whole in one write
}

TEST(GlooPeerDeath, SurvivorFailsPromptlyLargeMessages) {
  expect_survivor_fails_promptly(make_gloo_backend, size_t{4} << 20);  // 16 MiB: ring segments cut mid-transfer
}

// ---------------------------------------------------------------------------------------
// Failures: abort, timeouts, a peer that leaves, bad arguments.

TEST(GlooBackend, AbortFailsLaterOpsAtOnceAndThePeerPromptly) {
  expect_abort_fails_later_ops_and_the_peer(make_gloo_backend);
}

TEST(GlooBackend, AbortInterruptsAWaitingRecv) { expect_abort_interrupts_a_waiting_recv(make_gloo_backend); }

TEST(GlooBackend, AbortInterruptsALargeAllreduceOnEveryRank) {
  expect_abort_interrupts_a_large_allreduce(make_gloo_backend, 2);
}

TEST(GlooBackend, OpTimeoutIsACollectiveError) {
  EXPECT_CONTAINS(expect_op_timeout_is_a_collective_error(make_gloo_backend), "Timed out");
}

// Gloo learns that a peer left from its watchdog seeing the connection close, so the
// survivors wait for that before they go on.
TEST(GlooBackend, PeerThatLeftFailsOnlyTheOpsThatNeedIt) {
  expect_a_peer_that_left_fails_only_the_ops_that_need_it(make_gloo_backend, 300ms);
}

TEST(GlooBackend, BadRankArgumentsThrowWithoutBreakingTheGroup) {
  expect_bad_rank_arguments_leave_the_group_working(make_gloo_backend);
}

TEST(GlooBackend, JoinFailsWhenAPeerNeverComes) { expect_join_fails_when_a_peer_never_comes(make_gloo_backend); }

TEST(GlooBackend, KindIsGloo) {
  Group group = make_group(make_gloo_backend, "kind", 1);
  ASSERT_TRUE(group[0]);
  EXPECT_EQ(group[0]->kind(), col::BackendKind::kGloo);
}

}  // namespace
