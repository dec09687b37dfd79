#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "gantry/errors.h"
#include "tfevents_writer.h"

namespace fs = std::filesystem;

// A TensorBoard events reader written from the format's description, independent of the
// writer: bitwise CRC-32C, TFRecord framing, protobuf wire decoding. trial_files_test.cc
// uses it too (same test binary).
namespace gantry::tune::test_support {

struct ParsedEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  bool has_summary = false;
  std::vector<std::pair<std::string, float>> values;
};

namespace {

uint32_t bitwise_crc32c(const std::string& bytes) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char byte : bytes) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

uint32_t bitwise_masked(const std::string& bytes) {
  uint32_t crc = bitwise_crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

uint64_t little_endian(const std::string& bytes, size_t at, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i) value |= uint64_t{static_cast<unsigned char>(bytes.at(at + i))} << (8 * i);
  return value;
}

// Reads protobuf fields of one message, calling `on_field(number, wire_type, varint_or_fixed, bytes)`.
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

std::pair<std::string, float> parse_value(const std::string& bytes) {
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

ParsedEvent parse_event(const std::string& bytes) {
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

}  // namespace

/// Every event of a TFRecord events file; throws std::runtime_error on a bad frame or CRC.
std::vector<ParsedEvent> read_events_file(const std::string& path) {
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

}  // namespace gantry::tune::test_support

namespace gantry::tune::detail {
namespace {

using test_support::ParsedEvent;
using test_support::read_events_file;

class TempDir {
 public:
  TempDir() {
    std::random_device seed;
    path_ = fs::temp_directory_path() / ("gantry_tfevents_test_" + std::to_string(seed()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

std::string host_name() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  std::string ones(32, '\xff');
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c("", 0), 0u);
}

TEST(Crc32cTest, MaskedMatchesTheTfRecordFormula) {
  uint32_t crc = 0xE3069283u;
  EXPECT_EQ(masked_crc32c("123456789", 9), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST(TfEventsWriterTest, FileNameHasSecondsAndHost) {
  TempDir dir;
  auto before =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  TfEventsWriter writer(dir.path());
  fs::path path(writer.path());
  EXPECT_EQ(path.parent_path(), fs::path(dir.path()));
  std::smatch match;
  std::string name = path.filename().string();
  ASSERT_TRUE(std::regex_match(name, match, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+))"))) << name;
  EXPECT_GE(std::stoll(match[1]), before);
  EXPECT_EQ(match[2], host_name());
  EXPECT_TRUE(fs::exists(path));
}

TEST(TfEventsWriterTest, WritesVersionEventThenScalarsReadableWhileOpen) {
  TempDir dir;
  TfEventsWriter writer(dir.path());
  writer.add_scalars(1, 1000.5, {{"loss", 0.5}, {"eval/acc", 0.25}});
  writer.add_scalars(int64_t{1} << 40, 1001.25, {{"loss", 0.125}});

  // Still open: each add_scalars is flushed, so a reader sees both already.
  auto events = read_events_file(writer.path());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_FALSE(events[0].has_summary);
  EXPECT_GT(events[0].wall_time, 1.6e9);

  EXPECT_TRUE(events[1].file_version.empty());
  EXPECT_EQ(events[1].step, 1);
  EXPECT_DOUBLE_EQ(events[1].wall_time, 1000.5);
  ASSERT_EQ(events[1].values.size(), 2u);
  EXPECT_EQ(events[1].values[0].first, "loss");
  EXPECT_FLOAT_EQ(events[1].values[0].second, 0.5f);
  EXPECT_EQ(events[1].values[1].first, "eval/acc");
  EXPECT_FLOAT_EQ(events[1].values[1].second, 0.25f);

  EXPECT_EQ(events[2].step, int64_t{1} << 40);
  EXPECT_DOUBLE_EQ(events[2].wall_time, 1001.25);
  ASSERT_EQ(events[2].values.size(), 1u);
  EXPECT_EQ(events[2].values[0].first, "loss");
  EXPECT_FLOAT_EQ(events[2].values[0].second, 0.125f);
}

TEST(TfEventsWriterTest, ReopeningKeepsEarlierEventsAndOneVersionPerFile) {
  TempDir dir;
  { TfEventsWriter(dir.path()).add_scalars(1, 1.0, {{"x", 1}}); }
  { TfEventsWriter(dir.path()).add_scalars(2, 2.0, {{"x", 2}}); }
  // Within one second both writers share a name (and append); across a second boundary
  // there are two files. Either way nothing is lost and each file starts with its version.
  std::vector<int64_t> steps;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    auto events = read_events_file(entry.path().string());
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events[0].file_version, "brain.Event:2");
    for (size_t i = 1; i < events.size(); ++i) {
      EXPECT_TRUE(events[i].file_version.empty());
      steps.push_back(events[i].step);
    }
  }
  std::sort(steps.begin(), steps.end());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2}));
}

TEST(TfEventsWriterTest, MissingDirectoryThrowsNamingTheFile) {
  TempDir dir;
  std::string missing = dir.path() + "/no/such/dir";
  try {
    TfEventsWriter writer(missing);
    FAIL() << "expected gantry::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing + "/events.out.tfevents."), std::string::npos) << e.what();
  }
}

TEST(TfEventsWriterTest, FullDiskThrowsNamingTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this system";
  TempDir dir;
  // Whatever second the writer starts in, its file name is a link to /dev/full, whose
  // writes fail with ENOSPC.
  auto now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  for (int64_t second = now; second < now + 5; ++second) {
    fs::create_symlink("/dev/full", dir.path() + "/events.out.tfevents." + std::to_string(second) + "." + host_name());
  }
  try {
    TfEventsWriter writer(dir.path());
    writer.add_scalars(1, 1.0, {{"x", 1}});
    FAIL() << "expected gantry::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path() + "/events.out.tfevents."), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No space left"), std::string::npos) << e.what();
  }
}

// Cross-check with TensorBoard's own reader where it is installed.
TEST(TfEventsWriterTest, TensorBoardReadsTheFile) {
  if (std::system("python3 -c 'import tensorboard' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 cannot import tensorboard; the independent reader above covers the format";
  }
  TempDir dir;
  {
    TfEventsWriter writer(dir.path());
    writer.add_scalars(1, 1000.0, {{"loss", 0.5}, {"eval/acc", 0.25}});
    writer.add_scalars(2, 1001.0, {{"loss", 0.25}});
  }
  std::string script = dir.path() + "/read.py";
  std::string output = dir.path() + "/read.out";
  std::ofstream(script) << "import sys\n"
                           "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n"
                           "acc = EventAccumulator(sys.argv[1]); acc.Reload()\n"
                           "for tag in sorted(acc.Tags()['scalars']):\n"
                           "    for e in acc.Scalars(tag): print(tag, e.step, e.value)\n";
  std::string command = "python3 " + script + " " + dir.path() + " > " + output + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << std::ifstream(output).rdbuf();
  std::stringstream text;
  text << std::ifstream(output).rdbuf();
  EXPECT_EQ(text.str(), "eval/acc 1 0.25\nloss 1 0.5\nloss 2 0.25\n");
}

}  // namespace
}  // namespace gantry::tune::detail
