#include "gantry/ids.h"

#include <atomic>
#include <random>

namespace gantry {
namespace {

// Random per process, so ids made in different processes never collide; the counter
// makes each id in a process unique without locking.
struct IdSource {
  uint64_t prefix;
  std::atomic<uint64_t> counter{1};
  IdSource() {
    std::random_device rd;
    prefix = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
};

IdSource& id_source() {
  static IdSource source;
  return source;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

UniqueId UniqueId::generate() {
  IdSource& s = id_source();
  uint64_t n = s.counter.fetch_add(1, std::memory_order_relaxed);
  UniqueId id;
  std::memcpy(id.bytes_.data(), &s.prefix, 8);
  std::memcpy(id.bytes_.data() + 8, &n, 8);
  return id;
}

UniqueId UniqueId::from_binary(std::string_view raw) {
  UniqueId id;
  if (raw.size() == kSize) std::memcpy(id.bytes_.data(), raw.data(), kSize);
  return id;
}

UniqueId UniqueId::from_hex(std::string_view hex) {
  UniqueId id;
  if (hex.size() != 2 * kSize) return id;
  for (size_t i = 0; i < kSize; ++i) {
    int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return UniqueId();
    id.bytes_[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return id;
}

std::string UniqueId::hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * kSize, '0');
  for (size_t i = 0; i < kSize; ++i) {
    out[2 * i] = kDigits[bytes_[i] >> 4];
    out[2 * i + 1] = kDigits[bytes_[i] & 15];
  }
  return out;
}

bool UniqueId::is_nil() const {
  for (uint8_t b : bytes_)
    if (b != 0) return false;
  return true;
}

}  // namespace gantry
