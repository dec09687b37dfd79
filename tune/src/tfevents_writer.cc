#include "tfevents_writer.h"

#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "gantry/errors.h"

namespace gantry::tune::detail {
namespace {

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;
constexpr uint32_t kCrcMaskDelta = 0xa282ead8u;
constexpr const char* kFileVersion = "brain.Event:2";

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ kCastagnoliReflected : crc >> 1;
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// Protobuf wire format, only what Event, Summary and Summary.Value need. Bytes are
// written explicitly little-endian so the file is the same on any host.
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (field << 3) | type); }

void put_le(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3;
// Summary summary = 5; } }, Summary { repeated Value value = 1; },
// Value { string tag = 1; oneof value { float simple_value = 2; } } (TensorFlow's
// core/util/event.proto and core/framework/summary.proto).
std::string encode_event_header(double wall_time, int64_t step) {
  std::string event;
  put_key(event, 1, kFixed64);
  put_le(event, std::bit_cast<uint64_t>(wall_time), 8);
  put_key(event, 2, kVarint);
  // A negative int64 is a ten-byte varint of its two's complement, as protobuf does it.
  put_varint(event, static_cast<uint64_t>(step));
  return event;
}

std::string encode_summary(const std::vector<std::pair<std::string, double>>& scalars) {
  std::string summary;
  for (const auto& [tag, value] : scalars) {
    std::string entry;
    put_bytes(entry, 1, tag);
    put_key(entry, 2, kFixed32);
    put_le(entry, std::bit_cast<uint32_t>(static_cast<float>(value)), 4);
    put_bytes(summary, 1, entry);
  }
  return summary;
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string io_error(const std::string& what, const std::string& path, int error) {
  std::string message = "tune: cannot " + what + " TensorBoard events file " + path;
  if (error != 0) message += ": " + std::string(std::strerror(error));
  return message;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < size; ++i) crc = kCrc32cTable[(crc ^ bytes[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + kCrcMaskDelta;
}

TfEventsWriter::TfEventsWriter(const std::string& directory) {
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  path_ = (std::filesystem::path(directory) /
           ("events.out.tfevents." + std::to_string(seconds.count()) + "." + host_name()))
              .string();
  // A trial that is closed and reopened within the same second gets the same name:
  // append to that file rather than truncate what it already holds.
  std::error_code ec;
  bool fresh = !std::filesystem::exists(path_, ec) || std::filesystem::file_size(path_, ec) == 0;
  errno = 0;
  out_.open(path_, std::ios::binary | std::ios::app);
  if (!out_) throw Error(io_error("create", path_, errno));
  if (fresh) {
    std::string event = encode_event_header(now_seconds(), 0);
    put_bytes(event, 3, kFileVersion);
    write_record(event);
    flush();
  }
}

void TfEventsWriter::add_scalars(int64_t step, double wall_time,
                                 const std::vector<std::pair<std::string, double>>& scalars) {
  std::string event = encode_event_header(wall_time, step);
  put_bytes(event, 5, encode_summary(scalars));
  write_record(event);
  // Flushed per step so TensorBoard shows results while the trial runs.
  flush();
}

void TfEventsWriter::flush() {
  errno = 0;
  out_.flush();
  if (!out_) throw Error(io_error("write", path_, errno));
}

void TfEventsWriter::write_record(const std::string& event) {
  std::string header;
  put_le(header, event.size(), 8);
  std::string record = header;
  put_le(record, masked_crc32c(header.data(), header.size()), 4);
  record += event;
  put_le(record, masked_crc32c(event.data(), event.size()), 4);
  errno = 0;
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
  if (!out_) throw Error(io_error("write", path_, errno));
}

}  // namespace gantry::tune::detail
