#pragma once

// Publishing a record for the head's dashboard: a JSON text a driver writes to the
// cluster's key-value store and keeps up to date while it runs.
//
// Any library can publish a record the dashboard shows this way: build the record with a
// `ThinnedSeries` for each series that grows without bound, and write it through a
// `RecordPublisher` under `RecordPublisher::key_for(kind, name)`. The dashboard reads the
// keys `gantry.dashboard/train/*` (Train's runs) and `gantry.dashboard/tune/*` (Tune's
// sweeps); dashboard/API.md ("What Train and Tune publish") gives their formats.
//
//     gantry::RecordPublisher publisher(gantry::RecordPublisher::key_for("train", name), "[train " + name + "]");
//     publisher.mark_changed();                         // after each update of the record
//     publisher.publish_if_due([&] { return record.dump(); }, now);  // in the driver's loop

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace gantry {

/// Keeps every `stride`-th of the points offered, at most `capacity` of them: when full,
/// every other kept point goes and the stride doubles, so the kept points stay evenly
/// spread over all that were offered. Not thread-safe.
///
///     ThinnedSeries<double> losses(500);
///     losses.offer([&] { return loss; });  // `loss` is read only when the point is kept
template <typename Point>
class ThinnedSeries {
 public:
  /// At most `capacity` points are kept (2 at least).
  explicit ThinnedSeries(size_t capacity) : capacity_(capacity < 2 ? 2 : capacity) {}

  /// Offers the point `make()` returns; `make` is called only for a point that is kept,
  /// so a point that costs something to build costs nothing when it is thinned out.
  template <typename Make>
  void offer(Make&& make) {
    if (offered_++ % stride_ != 0) return;
    points_.push_back(std::forward<Make>(make)());
    if (points_.size() < capacity_) return;
    size_t kept = 0;
    for (size_t i = 0; i < points_.size(); i += 2) points_[kept++] = std::move(points_[i]);
    points_.resize(kept);
    stride_ *= 2;
  }
  /// The kept points, oldest first, evenly spread over all offered; the first offered is
  /// always among them.
  const std::vector<Point>& points() const { return points_; }

 private:
  size_t capacity_;
  size_t stride_ = 1;
  size_t offered_ = 0;
  std::vector<Point> points_;
};

/// When a record is written, and what happens when writing fails. The record itself is
/// the caller's: it calls `mark_changed` after each update and hands a function that
/// builds the record's text to `publish_if_due` (periodically) or `publish` (on a state
/// change, and the final write). The text is built only when a write is due.
///
/// Periodic writes happen only when something changed, at most once per `kInterval`, and
/// no sooner than `kCostFactor` times as long as the last write took (building the text
/// included), so that publishing takes at most about 1/20 of the driver's time however
/// large the record. A write that fails (the sink or the builder throws, e.g. the head
/// is unreachable) never fails the driver: it is said once on stderr, and periodic
/// writes then wait `kRetryAfterFailure`; `publish` always tries.
///
/// Not thread-safe: used from one driver thread.
class RecordPublisher {
 public:
  using Clock = std::chrono::steady_clock;
  /// Where a record goes: (key, JSON text). May throw; the publisher catches it.
  using Sink = std::function<void(const std::string& key, const std::string& value)>;

  /// The least time between two periodic writes.
  static constexpr auto kInterval = std::chrono::seconds(1);
  /// Periodic writes also wait this many times as long as the last write took.
  static constexpr int kCostFactor = 20;
  /// Periodic writes wait this long after a failed write.
  static constexpr auto kRetryAfterFailure = std::chrono::seconds(10);

  /// Writes under `key` through `sink`. `label` starts the message that a failed write
  /// prints on stderr, naming the driver (e.g. "[train mlp]", "[tune sweep]"). Nothing is
  /// written before the first `publish` or `publish_if_due`, which writes (the record
  /// counts as changed at first).
  RecordPublisher(std::string key, std::string label, Sink sink = cluster_kv());

  /// Writes with gantry::kv::put into the cluster's namespace ({.cluster = true}), where
  /// the dashboard reads. Needs a connected driver (gantry::init); throws as kv::put does.
  static Sink cluster_kv();
  /// The key the dashboard reads a record of `kind` ("train", "tune") named `name` from:
  /// "gantry.dashboard/<kind>/<name>".
  static std::string key_for(const std::string& kind, const std::string& name);

  /// The key the record is written under.
  const std::string& key() const { return key_; }

  /// Notes that the record changed since the last write, so that the next periodic write
  /// that is due happens.
  void mark_changed() { changed_ = true; }
  /// Whether the record changed since the last write (true before the first write).
  bool changed() const { return changed_; }

  /// Writes `make()` when the record changed since the last write, `kInterval` and
  /// `kCostFactor` times the last write's cost have passed since it, and, after a failed
  /// write, `kRetryAfterFailure` has passed since that. Calls `make` only when it writes.
  /// Never throws: a failure is said once on stderr and the next write tries again.
  void publish_if_due(const std::function<std::string()>& make, Clock::time_point now = Clock::now());
  /// Writes `make()` now, whatever the last write did (a state change, the final state).
  /// Never throws, as `publish_if_due`.
  void publish(const std::function<std::string()>& make, Clock::time_point now = Clock::now());

 private:
  std::string key_;
  std::string label_;
  Sink sink_;
  bool changed_ = true;
  Clock::time_point last_write_{};
  Clock::duration last_cost_{};  ///< how long the last write took, building the text included
  Clock::time_point last_failure_{};
  bool failed_before_ = false;  ///< whether the last write failed
  bool failure_said_ = false;
};

}  // namespace gantry
