#pragma once

// A TensorBoard events reader written from the format's description, independent of the
// writer: bitwise CRC-32C, TFRecord framing, protobuf wire decoding. tfevents_test.cc and
// trial_files_test.cc (one test binary) read the files the writer makes with it.

#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace gantry::tune::test_support {

/// One Event record: its wall time, step, file_version (the first event only) and, for a
/// summary event, the (tag, simple_value) pairs.
struct ParsedEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  bool has_summary = false;
  std::vector<std::pair<std::string, float>> values;
};

/// CRC-32C (Castagnoli) one bit at a time, straight from the polynomial.
inline uint32_t bitwise_crc32c(const std::string& bytes) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

/// The TFRecord mask of bitwise_crc32c(bytes).
inline uint32_t bitwise_masked(const std::string& bytes) {
  uint32_t crc = bitwise_crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/// The `size`-byte little-endian unsigned integer at `bytes[at]`.
inline uint64_t little_endian(const std::string& bytes, size_t at, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i) value |= uint64_t{static_cast<unsigned char>(bytes.at(at + i))} << (8 * i);
  return value;
}

/// Reads the protobuf fields of one message in order: the caller reads each key with varint()
/// and then the value its wire type says (varint(), fixed(4 or 8) or length_delimited()).
class WireReader {
 public:
  explicit WireReader(std::string bytes) : bytes_(std::move(bytes)) {}
  bool done() const { return at_ >= bytes_.size(); }
  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      auto byte = static_cast<unsigned char>(bytes_.at(at_++));
      value |= uint64_t{byte & 0x7fu} << shift;
      if ((byte & 0x80) == 0) return value;
    }
    throw std::runtime_error("varint too long");
  }
  uint64_t fixed(int size) {
    uint64_t value = little_endian(bytes_, at_, size);
    at_ += size;
    return value;
  }
  std::string length_delimited() {
    uint64_t size = varint();
    if (at_ + size > bytes_.size()) throw std::runtime_error("length-delimited field past the end");
    std::string out = bytes_.substr(at_, size);
    at_ += size;
    return out;
  }

 private:
  std::string bytes_;
  size_t at_ = 0;
};

/// One Summary.Value: its tag and simple_value.
inline std::pair<std::string, float> parse_value(const std::string& bytes) {
  WireReader in(bytes);
  std::pair<std::string, float> value{"", std::nanf("")};
  while (!in.done()) {
    uint64_t key = in.varint();
    if (key == ((1 << 3) | 2)) {
      value.first = in.length_delimited();
    } else if (key == ((2 << 3) | 5)) {
      value.second = std::bit_cast<float>(static_cast<uint32_t>(in.fixed(4)));
    } else {
      throw std::runtime_error("unexpected Summary.Value field key " + std::to_string(key));
    }
  }
  return value;
}

/// One Event message; throws std::runtime_error on a field the writer should not write.
inline ParsedEvent parse_event(const std::string& bytes) {
  WireReader in(bytes);
  ParsedEvent event;
  while (!in.done()) {
    uint64_t key = in.varint();
    if (key == ((1 << 3) | 1)) {
      event.wall_time = std::bit_cast<double>(in.fixed(8));
    } else if (key == ((2 << 3) | 0)) {
      event.step = static_cast<int64_t>(in.varint());
    } else if (key == ((3 << 3) | 2)) {
      event.file_version = in.length_delimited();
    } else if (key == ((5 << 3) | 2)) {
      event.has_summary = true;
      WireReader summary(in.length_delimited());
      while (!summary.done()) {
        if (summary.varint() != ((1 << 3) | 2)) throw std::runtime_error("unexpected Summary field");
        event.values.push_back(parse_value(summary.length_delimited()));
      }
    } else {
      throw std::runtime_error("unexpected Event field key " + std::to_string(key));
    }
  }
  return event;
}

/// Every event of a TFRecord events file; throws std::runtime_error on a bad frame or CRC.
inline std::vector<ParsedEvent> read_events_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<ParsedEvent> events;
  size_t at = 0;
  while (at < bytes.size()) {
    if (at + 12 > bytes.size()) throw std::runtime_error("truncated record header");
    std::string length_bytes = bytes.substr(at, 8);
    uint64_t length = little_endian(bytes, at, 8);
    if (little_endian(bytes, at + 8, 4) != bitwise_masked(length_bytes)) {
      throw std::runtime_error("bad length CRC");
    }
    if (at + 12 + length + 4 > bytes.size()) throw std::runtime_error("truncated record");
    std::string data = bytes.substr(at + 12, length);
    if (little_endian(bytes, at + 12 + length, 4) != bitwise_masked(data)) throw std::runtime_error("bad data CRC");
    events.push_back(parse_event(data));
    at += 12 + length + 4;
  }
  return events;
}

/// A fresh directory under the system temp directory, named `prefix` and a random number,
/// removed with everything in it on destruction.
///   TempDir dir("gantry_tfevents_test_");
///   TfEventsWriter writer(dir.path());
class TempDir {
 public:
  explicit TempDir(const std::string& prefix) {
    std::random_device seed;
    path_ = std::filesystem::temp_directory_path() / (prefix + std::to_string(seed()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  /// The directory's path.
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace gantry::tune::test_support
