#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <list>
#include <unordered_map>
#include <unordered_set>
#include <vector>

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
    std::string path;     // where the creator writes; empty on error
    std::string error;    // why not, e.g. the store is full
    bool reused = false;  // the file exists (a freed object's, pages already in memory)
  };
  /// Reserves `size` bytes for object `id`. A `secondary` object is a copy of another
  /// node's object, pulled here for readers on this node: once sealed it is a cache entry,
  /// dropped (oldest use first) when room is needed for others.
  Reservation reserve(const ObjectId& id, uint64_t size, bool secondary = false);
  /// A secondary copy is complete: readers may use it and it may be evicted.
  void seal_secondary(const ObjectId& id);
  /// The file of object `id` if this store holds it complete (marking a secondary copy
  /// used), else empty.
  std::string find(const ObjectId& id);
  /// Releases the object's bytes. Its file is kept for reuse by a later object of similar
  /// size (so its memory need not be allocated and zeroed again) or unlinked; a secondary
  /// copy's file is always unlinked (readers here may still map it). Unknown ids are
  /// ignored.
  void remove(const ObjectId& id);

  uint64_t used() const;
  uint64_t capacity() const { return capacity_; }
  size_t num_objects() const;
  /// Secondary copies dropped to make room, since the store started.
  uint64_t num_evicted() const;
  /// Sealed secondary copies held.
  size_t num_secondary() const;
  /// Bytes held by freed files kept for reuse (counted in used()).
  uint64_t pooled() const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::string path_of(const ObjectId& id) const;
  // Needs mu_ held. Unlinks pooled files, oldest first, until `need` more bytes fit.
  void evict_pool_locked(uint64_t need);
  // Needs mu_ held and a non-empty pool. Unlinks the oldest pooled file.
  void drop_oldest_pooled_locked();
  // Needs mu_ held. Unlinks sealed secondary copies, least recently used first, until
  // `need` more bytes fit.
  void evict_secondary_locked(uint64_t need);

  struct PooledFile {
    std::string path;
    uint64_t size;
  };

  const std::filesystem::path dir_;
  const uint64_t capacity_;
  mutable std::mutex mu_;  // guards used_ and sizes_
  uint64_t used_ = 0;    // live objects and pooled files
  uint64_t pooled_ = 0;  // part of used_ held by pool_
  uint64_t evicted_ = 0;
  uint64_t next_pool_file_ = 0;
  std::unordered_map<ObjectId, uint64_t> sizes_;
  std::unordered_set<ObjectId> secondary_;  // secondary copies, sealed or being written
  std::list<ObjectId> secondary_lru_;       // sealed ones, least recently used first
  std::vector<PooledFile> pool_;  // freed files, oldest first
};

/// Bytes of physical memory.
uint64_t physical_memory_bytes();

/// Removes store directories under `root` named `gantry_<pid>_...` whose process is gone
/// (an agent killed before it could clean up). Returns how many went. A pid that is alive,
/// even as another program, keeps its directory.
size_t remove_stale_store_dirs(const std::filesystem::path& root);

}  // namespace gantry::internal
