#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <unordered_map>

#include "gantry/ids.h"

namespace gantry::internal {

/// A node's shared-memory object store: the agent's ledger of which objects exist, where,
/// and how much of the capacity they use. Creators write the files themselves after a
/// successful `reserve`; readers on the node map them. Thread-safe (one mutex).
class ObjectStore {
 public:
  /// `dir` is created if missing (normally under /dev/shm) and removed on destruction.
  ObjectStore(std::filesystem::path dir, uint64_t capacity_bytes);
  ~ObjectStore();

  struct Reservation {
    std::string path;   // where the creator writes; empty on error
    std::string error;  // why not, e.g. the store is full
  };
  /// Reserves `size` bytes for object `id`.
  Reservation reserve(const ObjectId& id, uint64_t size);
  /// Unlinks the object and releases its bytes. Unknown ids are ignored.
  void remove(const ObjectId& id);

  uint64_t used() const;
  uint64_t capacity() const { return capacity_; }
  size_t num_objects() const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::string path_of(const ObjectId& id) const;

  const std::filesystem::path dir_;
  const uint64_t capacity_;
  mutable std::mutex mu_;  // guards used_ and sizes_
  uint64_t used_ = 0;
  std::unordered_map<ObjectId, uint64_t> sizes_;
};

/// Bytes of physical memory.
uint64_t physical_memory_bytes();

}  // namespace gantry::internal
