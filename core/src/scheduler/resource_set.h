#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>

namespace gantry::internal {

/// Resource quantities are fixed-point with this many units per 1, so fractional requests
/// such as `num_gpus = 0.25` add up exactly (four of them are exactly one device).
inline constexpr int64_t kResourceUnit = 10000;

/// The largest quantity `FixedPoint::from_double` accepts; bounds every sum far below the
/// range of int64_t.
// Large enough for memory in bytes on big servers (~800 TiB), small enough for int64 raw units.
inline constexpr double kMaxResourceQuantity = 9e14;

/// Names of the predefined resources. Memory is counted in bytes.
inline const std::string kCpu = "CPU", kGpu = "GPU", kMemory = "memory";

/// A resource quantity in exact steps of 1/kResourceUnit. Doubles enter only through
/// `from_double`, which rounds once; after that, sums and differences are exact.
///
///     FixedPoint q = FixedPoint::from_double(0.25);
///     q + q + q + q == FixedPoint::whole(1);  // true, unlike with doubles for 0.1
class FixedPoint {
 public:
  constexpr FixedPoint() = default;

  /// The quantity `raw / kResourceUnit`. No checks: for values already in fixed point.
  static constexpr FixedPoint from_raw(int64_t raw) {
    FixedPoint q;
    q.raw_ = raw;
    return q;
  }

  /// The whole quantity `n`.
  static constexpr FixedPoint whole(int64_t n) { return from_raw(n * kResourceUnit); }

  /// `v` rounded to the nearest 1/kResourceUnit (halves away from zero).
  /// Throws std::invalid_argument, naming the value, when `v` is NaN, infinite, negative or
  /// above kMaxResourceQuantity.
  static FixedPoint from_double(double v);

  constexpr int64_t raw() const { return raw_; }
  double to_double() const { return static_cast<double>(raw_) / kResourceUnit; }

  /// Shortest exact decimal form: "1", "0.5", "0.25", "2.0001", "-0.5".
  std::string to_string() const;

  /// True when the quantity has no fractional part.
  constexpr bool is_whole() const { return raw_ % kResourceUnit == 0; }

  constexpr FixedPoint& operator+=(FixedPoint other) {
    raw_ += other.raw_;
    return *this;
  }
  constexpr FixedPoint& operator-=(FixedPoint other) {
    raw_ -= other.raw_;
    return *this;
  }
  friend constexpr FixedPoint operator+(FixedPoint a, FixedPoint b) { return a += b; }
  friend constexpr FixedPoint operator-(FixedPoint a, FixedPoint b) { return a -= b; }
  friend constexpr auto operator<=>(FixedPoint, FixedPoint) = default;
  friend constexpr bool operator==(FixedPoint, FixedPoint) = default;

 private:
  int64_t raw_ = 0;
};

std::ostream& operator<<(std::ostream& os, FixedPoint q);

/// A bag of named, non-negative resource quantities, e.g. {CPU: 2, GPU: 0.5}. A name that is
/// absent means zero, and zero quantities are never stored, so two sets with the same
/// non-zero quantities compare equal. Not thread-safe.
///
///     ResourceSet request = ResourceSet::from_doubles({{kCpu, 1}, {kGpu, 0.5}});
///     if (node_free.contains(request)) node_free -= request;
class ResourceSet {
 public:
  ResourceSet() = default;

  /// Converts user-facing doubles (task options, node capacity). Zero entries are dropped.
  /// Throws std::invalid_argument naming the resource for an empty name or a quantity
  /// `FixedPoint::from_double` rejects, e.g. "resource 'GPU': quantity -1 is negative".
  static ResourceSet from_doubles(const std::map<std::string, double>& m);

  /// Sets `name` to `q`; zero removes it. Throws std::invalid_argument for a negative `q`
  /// or an empty name.
  void set(const std::string& name, FixedPoint q);

  /// The quantity of `name`, zero when absent.
  FixedPoint get(const std::string& name) const;

  /// True when every quantity of `request` is at most ours (an empty request always fits).
  bool contains(const ResourceSet& request) const;

  /// Adds every quantity of `other`.
  ResourceSet& operator+=(const ResourceSet& other);

  /// Subtracts every quantity of `other`. Throws std::logic_error, changing nothing, when
  /// `other` is not contained in this set: a quantity would go negative.
  ResourceSet& operator-=(const ResourceSet& other);

  /// The non-zero quantities, sorted by name.
  const std::map<std::string, FixedPoint>& quantities() const { return quantities_; }

  /// The quantities as doubles, for the public API (e.g. `RuntimeContext::assigned_resources`).
  std::map<std::string, double> to_doubles() const;

  /// "{CPU: 1, GPU: 0.5, memory: 1073741824}", sorted by name; "{}" when empty.
  std::string to_string() const;

  bool empty() const { return quantities_.empty(); }
  bool operator==(const ResourceSet& other) const = default;

 private:
  std::map<std::string, FixedPoint> quantities_;  // invariant: every value > 0
};

std::ostream& operator<<(std::ostream& os, const ResourceSet& set);

}  // namespace gantry::internal
