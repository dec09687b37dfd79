#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace gantry::tune::detail {

/// CRC-32C (Castagnoli), as TFRecord framing uses it.
uint32_t crc32c(const void* data, size_t size);
/// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t size);

/// Writes TensorBoard event files (`events.out.tfevents.<seconds>.<host>`): TFRecords of
/// `Event` protobufs (file_version first, then one Event per step of scalar summaries),
/// encoded by hand, so `tensorboard --logdir` reads them. Not thread-safe.
class TfEventsWriter {
 public:
  /// Creates the file in `directory` (which must exist) and writes the version event.
  explicit TfEventsWriter(const std::string& directory);
  /// One Event at `step` with a simple_value per (tag, value).
  void add_scalars(int64_t step, double wall_time, const std::vector<std::pair<std::string, double>>& scalars);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);

  std::string path_;
  std::ofstream out_;
};

}  // namespace gantry::tune::detail
