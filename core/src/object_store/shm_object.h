#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace gantry::internal {

/// A file in shared memory (/dev/shm) mapped into this process. Unmapped on destruction.
/// A mapping stays valid after its file is unlinked; but a freed object's file may be
/// reused for a new object, so a mapping must only be read while a reference to its
/// object is held (get() and task arguments hold one).
class MappedFile {
 public:
  /// Creates `path` (must not exist) of `size` bytes, mapped read-write. With `reuse`, the
  /// file exists (a freed object's, handed over by the store) and is resized instead.
  /// Throws gantry::Error naming the path and the reason on failure.
  static std::unique_ptr<MappedFile> create(const std::string& path, size_t size, bool reuse = false);
  /// Maps an existing file read-only. Throws gantry::ObjectLostError when it is gone.
  static std::unique_ptr<MappedFile> open_read_only(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, uint8_t* data, size_t size) : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  uint8_t* data_;
  size_t size_;
};

}  // namespace gantry::internal
