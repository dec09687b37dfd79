// Publishing a dashboard record without a cluster: the thinned series, and when the
// publisher writes (the writes land in a fake sink; the clock is passed by hand).

#include "gantry/published_record.h"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gantry/errors.h"

namespace gantry {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// What the publisher wrote, and how often it built the text.
struct FakeStore {
  std::vector<std::pair<std::string, std::string>> writes;
  int builds = 0;
  RecordPublisher::Sink sink() {
    return [this](const std::string& key, const std::string& value) { writes.emplace_back(key, value); };
  }
  std::function<std::string()> make(std::string text) {
    return [this, text = std::move(text)] {
      ++builds;
      return text;
    };
  }
};

TEST(ThinnedSeries, KeepsAtMostItsCapacityEvenlySpread) {
  ThinnedSeries<int> s(10);
  for (int i = 0; i < 9; ++i) s.offer([&] { return i; });
  EXPECT_EQ(s.points(), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8}));  // not full yet: everything
  for (int i = 9; i < 1000; ++i) s.offer([&] { return i; });
  ASSERT_LE(s.points().size(), 10u);
  ASSERT_GE(s.points().size(), 5u);
  EXPECT_EQ(s.points().front(), 0);
  int step = s.points()[1] - s.points()[0];
  for (size_t k = 1; k < s.points().size(); ++k) EXPECT_EQ(s.points()[k] - s.points()[k - 1], step) << k;
  EXPECT_GT(s.points().back() + step, 999) << "the kept points reach the latest ones";
}

TEST(ThinnedSeries, BuildsOnlyThePointsItKeeps) {
  ThinnedSeries<int> s(4);
  int built = 0;
  for (int i = 0; i < 64; ++i) {
    s.offer([&] {
      ++built;
      return i;
    });
  }
  EXPECT_LT(built, 64) << "a thinned-out point is never built";
  EXPECT_LE(s.points().size(), 4u);
  EXPECT_EQ(s.points().front(), 0);
}

TEST(ThinnedSeries, ACapacityBelowTwoKeepsTwo) {
  ThinnedSeries<int> s(0);
  for (int i = 0; i < 100; ++i) s.offer([&] { return i; });
  ASSERT_FALSE(s.points().empty());
  EXPECT_LE(s.points().size(), 2u);
  EXPECT_EQ(s.points().front(), 0);
}

TEST(RecordPublisher, KeysAreWhereTheDashboardReads) {
  EXPECT_EQ(RecordPublisher::key_for("train", "mlp"), "gantry.dashboard/train/mlp");
  EXPECT_EQ(RecordPublisher::key_for("tune", "sweep"), "gantry.dashboard/tune/sweep");
  RecordPublisher publisher(RecordPublisher::key_for("train", "mlp"), "[train mlp]", [](auto&, auto&) {});
  EXPECT_EQ(publisher.key(), "gantry.dashboard/train/mlp");
}

TEST(RecordPublisher, WritesAtMostOncePerIntervalAndOnlyWhatChanged) {
  FakeStore store;
  RecordPublisher publisher("k", "[test]", store.sink());
  auto t0 = RecordPublisher::Clock::now();
  EXPECT_TRUE(publisher.changed()) << "nothing written yet";
  publisher.publish_if_due(store.make("first"), t0);
  ASSERT_EQ(store.writes.size(), 1u);
  EXPECT_EQ(store.writes[0], (std::pair<std::string, std::string>{"k", "first"}));
  EXPECT_FALSE(publisher.changed());

  publisher.mark_changed();
  EXPECT_TRUE(publisher.changed());
  publisher.publish_if_due(store.make("early"), t0 + milliseconds(10));
  EXPECT_EQ(store.writes.size(), 1u) << "within the interval of the last write";
  EXPECT_EQ(store.builds, 1) << "the text is built only for a write";
  publisher.publish_if_due(store.make("second"), t0 + RecordPublisher::kInterval + milliseconds(1));
  ASSERT_EQ(store.writes.size(), 2u);
  EXPECT_EQ(store.writes[1].second, "second");

  publisher.publish_if_due(store.make("unchanged"), t0 + seconds(5));
  EXPECT_EQ(store.writes.size(), 2u) << "nothing changed: nothing to write";
  EXPECT_EQ(store.builds, 2);
}

TEST(RecordPublisher, PublishWritesAtOnceChangedOrNot) {
  FakeStore store;
  RecordPublisher publisher("k", "[test]", store.sink());
  auto t0 = RecordPublisher::Clock::now();
  publisher.publish(store.make("running"), t0);
  publisher.publish(store.make("finished"), t0 + milliseconds(1));
  ASSERT_EQ(store.writes.size(), 2u);
  EXPECT_EQ(store.writes[1].second, "finished");
  publisher.mark_changed();
  publisher.publish_if_due(store.make("late"), t0 + milliseconds(500));
  EXPECT_EQ(store.writes.size(), 2u) << "a periodic write counts its interval from the last write of any kind";
}

TEST(RecordPublisher, ASlowWritePushesTheNextOneOut) {
  int puts = 0;
  RecordPublisher publisher("k", "[test]", [&](const std::string&, const std::string&) {
    ++puts;
    std::this_thread::sleep_for(milliseconds(100));  // a large record, a slow head
  });
  auto t0 = RecordPublisher::Clock::now();
  publisher.publish([] { return "{}"; }, t0);
  publisher.mark_changed();
  publisher.publish_if_due([] { return "{}"; }, t0 + milliseconds(1500));
  EXPECT_EQ(puts, 1) << "a write of 100 ms waits 2 s for the next, not 1 s";
  publisher.publish_if_due([] { return "{}"; }, t0 + seconds(5));
  EXPECT_EQ(puts, 2);
}

TEST(RecordPublisher, AWriteThatFailsNeverThrowsIsSaidOnceAndWaitsBeforeTheNext) {
  int attempts = 0;
  RecordPublisher publisher("gantry.dashboard/train/offline", "[train offline]",
                            [&](const std::string&, const std::string&) {
                              ++attempts;
                              throw Error("the head cannot be reached");
                            });
  testing::internal::CaptureStderr();
  auto t0 = RecordPublisher::Clock::now();
  EXPECT_NO_THROW(publisher.publish([] { return "{}"; }, t0));
  EXPECT_EQ(attempts, 1);
  publisher.mark_changed();
  EXPECT_NO_THROW(publisher.publish_if_due([] { return "{}"; }, t0 + seconds(2)));
  EXPECT_EQ(attempts, 1) << "after a failure the periodic writes wait longer";
  EXPECT_NO_THROW(publisher.publish_if_due([] { return "{}"; }, t0 + RecordPublisher::kRetryAfterFailure + seconds(1)));
  EXPECT_EQ(attempts, 2);
  EXPECT_NO_THROW(publisher.publish([] { return "{}"; }, t0 + RecordPublisher::kRetryAfterFailure + seconds(2)));
  EXPECT_EQ(attempts, 3) << "publish tries whatever happened before";
  std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("[train offline]"), std::string::npos) << said;
  EXPECT_NE(said.find("gantry.dashboard/train/offline"), std::string::npos) << said;
  EXPECT_NE(said.find("the head cannot be reached"), std::string::npos) << said;
  EXPECT_EQ(said.find("the head cannot be reached"), said.rfind("the head cannot be reached")) << said;
}

TEST(RecordPublisher, AFailedWriteIsTriedAgainWithoutAFurtherChange) {
  int attempts = 0;
  bool reachable = false;
  std::string stored;
  RecordPublisher publisher("k", "[test]", [&](const std::string&, const std::string& value) {
    ++attempts;
    if (!reachable) throw Error("the head cannot be reached");
    stored = value;
  });
  testing::internal::CaptureStderr();
  auto t0 = RecordPublisher::Clock::now();
  publisher.mark_changed();
  publisher.publish_if_due([] { return "{\"state\": \"running\"}"; }, t0);
  EXPECT_EQ(attempts, 1);
  reachable = true;
  publisher.publish_if_due([] { return "{\"state\": \"running\"}"; }, t0 + RecordPublisher::kRetryAfterFailure + seconds(1));
  EXPECT_EQ(attempts, 2) << "the unwritten record is written once the head is back";
  EXPECT_EQ(stored, "{\"state\": \"running\"}");
  publisher.publish_if_due([] { return "{}"; }, t0 + RecordPublisher::kRetryAfterFailure + seconds(5));
  EXPECT_EQ(attempts, 2) << "nothing changed since";
  testing::internal::GetCapturedStderr();
}

TEST(RecordPublisher, ABuilderThatThrowsIsCaughtLikeASinkThatThrows) {
  FakeStore store;
  RecordPublisher publisher("k", "[test]", store.sink());
  testing::internal::CaptureStderr();
  auto t0 = RecordPublisher::Clock::now();
  EXPECT_NO_THROW(publisher.publish([]() -> std::string { throw Error("cannot build"); }, t0));
  std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("cannot build"), std::string::npos) << said;
  EXPECT_TRUE(store.writes.empty());
  publisher.publish(store.make("{}"), t0 + milliseconds(1));
  EXPECT_EQ(store.writes.size(), 1u) << "the next write tries again";
}

}  // namespace
}  // namespace gantry
