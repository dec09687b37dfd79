#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

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
  /// Maps an existing file copy-on-write (MAP_PRIVATE): reads see the file's pages, a
  /// write goes to a private copy of the page it touches, never to the file. What readers
  /// decode may alias such a mapping (see gantry::DecodeSource). Throws as open_read_only.
  static std::unique_ptr<MappedFile> open_copy_on_write(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  friend class WarmMappings;
  static std::unique_ptr<MappedFile> open_existing(const std::string& path, bool copy_on_write);
  MappedFile(std::string path, uint8_t* data, size_t size, size_t mapped, int fd)
      : path_(std::move(path)), data_(data), size_(size), mapped_(mapped), fd_(fd) {}

  std::string path_;
  uint8_t* data_;
  size_t size_;
  size_t mapped_;  // length of the mapping; size_ <= mapped_
  int fd_;         // create() keeps the file open (WarmMappings reads its identity and links); -1 otherwise
};

/// Writable mappings of this process's recent large objects, kept after they are sealed.
/// The node's store hands a freed object's file to the next object of a similar size;
/// when that object is this process's, it is written through the mapping kept for the
/// file instead of mapping it again. For a 256 MiB object on the 2-core development VM,
/// mapping the file (18 ms) and unmapping it (10 ms) took longer than the copy (24 ms).
///
/// A kept mapping is not read or written until the store hands its file back to this
/// process. It holds no memory the store has given up: the store truncates the pooled
/// files it drops, and mappings of files that are gone are dropped at the next create,
/// keep or drop_unlinked. Thread-safe (one mutex).
class WarmMappings {
 public:
  /// Keeps at most `max_kept` mappings, each of at least `min_bytes`.
  explicit WarmMappings(size_t max_kept = 2, size_t min_bytes = size_t{1} << 20)
      : max_kept_(max_kept), min_bytes_(min_bytes) {}
  ~WarmMappings();
  WarmMappings(const WarmMappings&) = delete;
  WarmMappings& operator=(const WarmMappings&) = delete;

  /// MappedFile::create(path, size, reuse), through a kept mapping when `reuse` names a
  /// file this process has mapped (its device and inode; the store renames files).
  std::unique_ptr<MappedFile> create(const std::string& path, size_t size, bool reuse);
  /// Keeps a sealed object's mapping for a later create, dropping the oldest beyond
  /// `max_kept`; a small one is unmapped now.
  void keep(std::unique_ptr<MappedFile> file);
  /// Unmaps kept mappings whose file was unlinked. Call after the store freed objects.
  void drop_unlinked();
  size_t num_kept() const;

 private:
  // Needs mu_ held. Moves the mappings whose file is gone into `out` (unmapped off the lock).
  void take_unlinked_locked(std::vector<std::unique_ptr<MappedFile>>& out);

  const size_t max_kept_;
  const size_t min_bytes_;
  mutable std::mutex mu_;  // guards kept_
  std::deque<std::unique_ptr<MappedFile>> kept_;  // oldest first
};

}  // namespace gantry::internal
