#include "gantry/codec.h"

#include <bit>
#include <cstdio>

namespace gantry {
namespace {

// MessagePack type bytes that this file emits or accepts.
constexpr uint8_t kNil = 0xc0;
constexpr uint8_t kFalse = 0xc2;
constexpr uint8_t kTrue = 0xc3;
constexpr uint8_t kBin8 = 0xc4;
constexpr uint8_t kBin16 = 0xc5;
constexpr uint8_t kBin32 = 0xc6;
constexpr uint8_t kExt8 = 0xc7;
constexpr uint8_t kExt16 = 0xc8;
constexpr uint8_t kExt32 = 0xc9;
constexpr uint8_t kFloat32 = 0xca;
constexpr uint8_t kFloat64 = 0xcb;
constexpr uint8_t kUint8 = 0xcc;
constexpr uint8_t kUint16 = 0xcd;
constexpr uint8_t kUint32 = 0xce;
constexpr uint8_t kUint64 = 0xcf;
constexpr uint8_t kInt8 = 0xd0;
constexpr uint8_t kInt16 = 0xd1;
constexpr uint8_t kInt32 = 0xd2;
constexpr uint8_t kInt64 = 0xd3;
constexpr uint8_t kFixExt1 = 0xd4;
constexpr uint8_t kFixExt16 = 0xd8;
constexpr uint8_t kStr8 = 0xd9;
constexpr uint8_t kStr16 = 0xda;
constexpr uint8_t kStr32 = 0xdb;
constexpr uint8_t kArray16 = 0xdc;
constexpr uint8_t kArray32 = 0xdd;
constexpr uint8_t kMap16 = 0xde;
constexpr uint8_t kMap32 = 0xdf;
// MessagePack has no 8-bit array or map header; `header` and `length_after` skip a zero code.
constexpr uint8_t kNoCode = 0x00;

constexpr uint8_t kFixStr = 0xa0;
constexpr size_t kFixStrLimit = 32;
constexpr uint8_t kFixArray = 0x90;
constexpr size_t kFixArrayLimit = 16;
constexpr uint8_t kFixMap = 0x80;
constexpr size_t kFixMapLimit = 16;

bool is_positive_fixint(uint8_t tag) { return tag <= 0x7f; }
bool is_negative_fixint(uint8_t tag) { return tag >= 0xe0; }
bool is_fixstr(uint8_t tag) { return (tag & 0xe0) == kFixStr; }
bool is_fixarray(uint8_t tag) { return (tag & 0xf0) == kFixArray; }
bool is_fixmap(uint8_t tag) { return (tag & 0xf0) == kFixMap; }
bool is_fixext(uint8_t tag) { return tag >= kFixExt1 && tag <= kFixExt16; }
bool is_integer(uint8_t tag) {
  return is_positive_fixint(tag) || is_negative_fixint(tag) || (tag >= kUint8 && tag <= kInt64);
}

// fixext1..fixext16 carry 1 << (tag - 0xd4) payload bytes.
size_t fixext_length(uint8_t tag) { return size_t{1} << (tag - kFixExt1); }

std::string hex_byte(uint8_t b) {
  char text[5];
  std::snprintf(text, sizeof(text), "0x%02x", b);
  return text;
}

// A value the 32-bit MessagePack length fields cannot describe is a caller bug, not bad
// input; it is caught while measuring, before any byte is written.
void check_length(size_t n) {
  if (n > std::numeric_limits<uint32_t>::max())
    throw Error("MessagePack cannot encode a length of " + std::to_string(n) +
                " (the limit is 2^32 - 1)");
}

}  // namespace

template <typename U>
void Writer::big_endian(U v) {
  static_assert(std::is_unsigned_v<U>);
  uint8_t bytes[sizeof(U)];
  for (size_t i = 0; i < sizeof(U); ++i)
    bytes[i] = static_cast<uint8_t>(v >> (8 * (sizeof(U) - 1 - i)));
  raw(bytes, sizeof(U));
}

void Writer::header(uint8_t fix_base, size_t fix_limit, uint8_t c8, uint8_t c16, uint8_t c32,
                    size_t n) {
  check_length(n);
  if (n < fix_limit) {
    byte(static_cast<uint8_t>(fix_base | n));
  } else if (c8 != kNoCode && n <= 0xff) {
    byte(c8);
    byte(static_cast<uint8_t>(n));
  } else if (n <= 0xffff) {
    byte(c16);
    big_endian(static_cast<uint16_t>(n));
  } else {
    byte(c32);
    big_endian(static_cast<uint32_t>(n));
  }
}

void Writer::uint(uint64_t v) {
  if (v <= 0x7f) {
    byte(static_cast<uint8_t>(v));
  } else if (v <= 0xff) {
    byte(kUint8);
    byte(static_cast<uint8_t>(v));
  } else if (v <= 0xffff) {
    byte(kUint16);
    big_endian(static_cast<uint16_t>(v));
  } else if (v <= 0xffffffff) {
    byte(kUint32);
    big_endian(static_cast<uint32_t>(v));
  } else {
    byte(kUint64);
    big_endian(v);
  }
}

void Writer::sint(int64_t v) {
  // Non-negative values take the unsigned forms, as every MessagePack encoder does, so
  // the same number has one encoding whatever its C++ type.
  if (v >= 0) {
    uint(static_cast<uint64_t>(v));
  } else if (v >= -32) {
    byte(static_cast<uint8_t>(v));
  } else if (v >= std::numeric_limits<int8_t>::min()) {
    byte(kInt8);
    byte(static_cast<uint8_t>(v));
  } else if (v >= std::numeric_limits<int16_t>::min()) {
    byte(kInt16);
    big_endian(static_cast<uint16_t>(v));
  } else if (v >= std::numeric_limits<int32_t>::min()) {
    byte(kInt32);
    big_endian(static_cast<uint32_t>(v));
  } else {
    byte(kInt64);
    big_endian(static_cast<uint64_t>(v));
  }
}

void Writer::f32(float v) {
  byte(kFloat32);
  big_endian(std::bit_cast<uint32_t>(v));
}

void Writer::f64(double v) {
  byte(kFloat64);
  big_endian(std::bit_cast<uint64_t>(v));
}

void Writer::str(std::string_view s) {
  header(kFixStr, kFixStrLimit, kStr8, kStr16, kStr32, s.size());
  raw(s.data(), s.size());
}

void Writer::bin(const void* data, size_t n) {
  header(0, 0, kBin8, kBin16, kBin32, n);
  raw(data, n);
}

void Writer::array(size_t n) { header(kFixArray, kFixArrayLimit, kNoCode, kArray16, kArray32, n); }

void Writer::map(size_t n) { header(kFixMap, kFixMapLimit, kNoCode, kMap16, kMap32, n); }

void Writer::ext(int8_t type, const void* data, size_t n) {
  if (std::has_single_bit(n) && n <= 16) {
    byte(static_cast<uint8_t>(kFixExt1 + std::countr_zero(n)));
  } else {
    header(0, 0, kExt8, kExt16, kExt32, n);
  }
  byte(static_cast<uint8_t>(type));
  raw(data, n);
}

void Reader::fail(const std::string& expected) const {
  std::string found = pos_ < size_ ? hex_byte(data_[pos_]) : std::string("end of buffer");
  throw DecodeError("malformed value at byte " + std::to_string(pos_) + ": expected " + expected +
                    ", found " + found);
}

const uint8_t* Reader::take(size_t n) {
  if (n > size_ - pos_) {
    throw DecodeError("malformed value at byte " + std::to_string(pos_) + ": expected " +
                      std::to_string(n) + " more bytes, found " + std::to_string(size_ - pos_) +
                      " before the end of the buffer");
  }
  const uint8_t* p = data_ + pos_;
  pos_ += n;
  return p;
}

template <typename U>
U Reader::big_endian() {
  static_assert(std::is_unsigned_v<U>);
  const uint8_t* p = take(sizeof(U));
  U v = 0;
  for (size_t i = 0; i < sizeof(U); ++i) v = static_cast<U>((v << 8) | p[i]);
  return v;
}

uint8_t Reader::peek() const {
  if (pos_ >= size_) fail("a value");
  return data_[pos_];
}

size_t Reader::length_after(uint8_t tag, uint8_t c8, uint8_t c16, uint8_t c32) {
  if (c8 != kNoCode && tag == c8) return byte();
  if (tag == c16) return big_endian<uint16_t>();
  if (tag == c32) return big_endian<uint32_t>();
  // Callers check the tag first; reaching here is a bug in this file.
  --pos_;
  fail("a length header");
}

void Reader::nil() {
  if (peek() != kNil) fail("nil");
  ++pos_;
}

bool Reader::boolean() {
  uint8_t tag = peek();
  if (tag != kFalse && tag != kTrue) fail("bool");
  ++pos_;
  return tag == kTrue;
}

int64_t Reader::sint() {
  const size_t start = pos_;
  const uint8_t tag = peek();
  if (!is_integer(tag)) fail("integer");
  ++pos_;
  if (is_positive_fixint(tag)) return tag;
  if (is_negative_fixint(tag)) return static_cast<int8_t>(tag);
  switch (tag) {
    case kUint8:
      return byte();
    case kUint16:
      return big_endian<uint16_t>();
    case kUint32:
      return big_endian<uint32_t>();
    case kUint64: {
      uint64_t v = big_endian<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        pos_ = start;
        fail("integer within the int64 range");
      }
      return static_cast<int64_t>(v);
    }
    case kInt8:
      return static_cast<int8_t>(byte());
    case kInt16:
      return static_cast<int16_t>(big_endian<uint16_t>());
    case kInt32:
      return static_cast<int32_t>(big_endian<uint32_t>());
    default:
      return static_cast<int64_t>(big_endian<uint64_t>());
  }
}

uint64_t Reader::uint() {
  const size_t start = pos_;
  const uint8_t tag = peek();
  if (!is_integer(tag) || is_negative_fixint(tag)) fail("non-negative integer");
  if (tag == kUint64) {
    ++pos_;
    return big_endian<uint64_t>();
  }
  // Every other form fits int64; other encoders may write a non-negative number in a
  // signed form, which is accepted.
  int64_t v = sint();
  if (v < 0) {
    pos_ = start;
    fail("non-negative integer");
  }
  return static_cast<uint64_t>(v);
}

double Reader::f64() {
  const uint8_t tag = peek();
  if (tag == kFloat32) {
    ++pos_;
    return std::bit_cast<float>(big_endian<uint32_t>());
  }
  if (tag == kFloat64) {
    ++pos_;
    return std::bit_cast<double>(big_endian<uint64_t>());
  }
  if (!is_integer(tag)) fail("float");
  if (tag == kUint64) return static_cast<double>(uint());
  return static_cast<double>(sint());
}

std::string_view Reader::str() {
  const uint8_t tag = peek();
  size_t n = 0;
  if (is_fixstr(tag)) {
    ++pos_;
    n = tag & 0x1f;
  } else if (tag == kStr8 || tag == kStr16 || tag == kStr32) {
    ++pos_;
    n = length_after(tag, kStr8, kStr16, kStr32);
  } else {
    fail("str");
  }
  return {reinterpret_cast<const char*>(take(n)), n};
}

std::string_view Reader::bin() {
  const uint8_t tag = peek();
  if (tag != kBin8 && tag != kBin16 && tag != kBin32) fail("bin");
  ++pos_;
  size_t n = length_after(tag, kBin8, kBin16, kBin32);
  return {reinterpret_cast<const char*>(take(n)), n};
}

size_t Reader::array() {
  const size_t start = pos_;
  const uint8_t tag = peek();
  size_t n = 0;
  if (is_fixarray(tag)) {
    ++pos_;
    n = tag & 0x0f;
  } else if (tag == kArray16 || tag == kArray32) {
    ++pos_;
    n = length_after(tag, kNoCode, kArray16, kArray32);
  } else {
    fail("array");
  }
  // Every element takes at least one byte; rejecting an impossible count here stops a
  // hostile header from driving a decoder through billions of failing iterations.
  if (n > size_ - pos_) {
    pos_ = start;
    fail("array of " + std::to_string(n) + " elements within the buffer");
  }
  return n;
}

size_t Reader::map() {
  const size_t start = pos_;
  const uint8_t tag = peek();
  size_t n = 0;
  if (is_fixmap(tag)) {
    ++pos_;
    n = tag & 0x0f;
  } else if (tag == kMap16 || tag == kMap32) {
    ++pos_;
    n = length_after(tag, kNoCode, kMap16, kMap32);
  } else {
    fail("map");
  }
  if (n > (size_ - pos_) / 2) {
    pos_ = start;
    fail("map of " + std::to_string(n) + " entries within the buffer");
  }
  return n;
}

std::string_view Reader::ext(int8_t& type) {
  const uint8_t tag = peek();
  size_t n = 0;
  if (is_fixext(tag)) {
    ++pos_;
    n = fixext_length(tag);
  } else if (tag == kExt8 || tag == kExt16 || tag == kExt32) {
    ++pos_;
    n = length_after(tag, kExt8, kExt16, kExt32);
  } else {
    fail("ext");
  }
  type = static_cast<int8_t>(byte());
  return {reinterpret_cast<const char*>(take(n)), n};
}

void Reader::skip() {
  // Counting the values still owed instead of recursing keeps the stack flat however
  // deeply hostile input nests arrays; array() and map() bound each count by the bytes
  // left, so the loop ends within the buffer.
  uint64_t pending = 1;
  while (pending > 0) {
    --pending;
    const uint8_t tag = peek();
    if (is_positive_fixint(tag) || is_negative_fixint(tag) || tag == kNil || tag == kFalse ||
        tag == kTrue) {
      ++pos_;
    } else if (is_fixstr(tag) || tag == kStr8 || tag == kStr16 || tag == kStr32) {
      str();
    } else if (tag == kBin8 || tag == kBin16 || tag == kBin32) {
      bin();
    } else if (is_fixarray(tag) || tag == kArray16 || tag == kArray32) {
      pending += array();
    } else if (is_fixmap(tag) || tag == kMap16 || tag == kMap32) {
      pending += 2 * static_cast<uint64_t>(map());
    } else if (is_fixext(tag) || tag == kExt8 || tag == kExt16 || tag == kExt32) {
      int8_t type = 0;
      ext(type);
    } else if (tag == kFloat32) {
      ++pos_;
      take(4);
    } else if (tag == kFloat64) {
      ++pos_;
      take(8);
    } else if (tag >= kUint8 && tag <= kInt64) {
      ++pos_;
      // 0xcc..0xcf and 0xd0..0xd3 carry 1, 2, 4 and 8 bytes.
      take(size_t{1} << ((tag - kUint8) & 3));
    } else {
      // 0xc1 is the one byte MessagePack never uses.
      fail("a MessagePack value");
    }
  }
}

namespace {

thread_local const DecodeSource* t_decode_source = nullptr;

}  // namespace

DecodeSource::DecodeSource(const uint8_t* data, size_t size, std::shared_ptr<void> keep_alive)
    : data_(data), size_(size), keep_alive_(std::move(keep_alive)), previous_(t_decode_source) {
  t_decode_source = this;
}

DecodeSource::~DecodeSource() { t_decode_source = previous_; }

std::shared_ptr<void> DecodeSource::retain(const void* p, size_t n) {
  const DecodeSource* source = t_decode_source;
  if (source == nullptr || source->keep_alive_ == nullptr || source->data_ == nullptr) return nullptr;
  auto begin = reinterpret_cast<uintptr_t>(source->data_);
  auto at = reinterpret_cast<uintptr_t>(p);
  if (at < begin || at - begin > source->size_ || n > source->size_ - (at - begin)) return nullptr;
  return source->keep_alive_;
}

}  // namespace gantry
