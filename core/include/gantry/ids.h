#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>

namespace gantry {

/// A 16-byte identifier for objects, tasks, actors, workers, nodes and jobs.
///
/// The first 8 bytes are random per process, the last 8 a per-process counter, so ids
/// are unique cluster-wide without coordination and cheap to make on the hot path.
class UniqueId {
 public:
  static constexpr size_t kSize = 16;

  UniqueId() { bytes_.fill(0); }

  /// A fresh id, unique in the cluster. Thread-safe.
  static UniqueId generate();
  /// Rebuilds an id from its 16 raw bytes; returns a nil id when `raw` has another size.
  static UniqueId from_binary(std::string_view raw);
  /// Parses 32 hex digits; returns a nil id when `hex` is not that.
  static UniqueId from_hex(std::string_view hex);

  std::string binary() const { return std::string(reinterpret_cast<const char*>(bytes_.data()), kSize); }
  std::string hex() const;
  /// 8 hex digits for logs: 4 of the per-process prefix, 4 of the counter.
  std::string short_hex() const { return hex().substr(0, 4) + hex().substr(16, 4); }
  bool is_nil() const;
  const uint8_t* data() const { return bytes_.data(); }

  friend bool operator==(const UniqueId& a, const UniqueId& b) { return a.bytes_ == b.bytes_; }
  friend bool operator!=(const UniqueId& a, const UniqueId& b) { return !(a == b); }
  friend bool operator<(const UniqueId& a, const UniqueId& b) { return a.bytes_ < b.bytes_; }

 private:
  std::array<uint8_t, kSize> bytes_;
};

using ObjectId = UniqueId;
using TaskId = UniqueId;
using ActorId = UniqueId;

}  // namespace gantry

template <>
struct std::hash<gantry::UniqueId> {
  size_t operator()(const gantry::UniqueId& id) const noexcept {
    uint64_t a, b;
    std::memcpy(&a, id.data(), 8);
    std::memcpy(&b, id.data() + 8, 8);
    return static_cast<size_t>(a ^ (b * 0x9E3779B97F4A7C15ull));
  }
};
