#include "object_store/object_store.h"

#include <signal.h>

#include <cerrno>

#include <unistd.h>

#include <algorithm>
#include <system_error>

namespace gantry::internal {
namespace {

std::string human_bytes(uint64_t n) {
  char buf[64];
  if (n >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", n / double(1ull << 30));
  else if (n >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MiB", n / double(1ull << 20));
  else std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(n));
  return buf;
}

}  // namespace

uint64_t physical_memory_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

size_t remove_stale_store_dirs(const std::filesystem::path& root) {
  size_t removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("gantry_", 0) != 0 || !entry.is_directory(ec)) continue;
    size_t end = name.find('_', 7);
    if (end == std::string::npos || end == 7) continue;
    std::string digits = name.substr(7, end - 7);
    if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
    pid_t pid = static_cast<pid_t>(std::stol(digits));
    if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::filesystem::remove_all(entry.path(), ec);
    if (!ec) ++removed;
  }
  return removed;
}

ObjectStore::ObjectStore(std::filesystem::path dir, uint64_t capacity_bytes)
    : dir_(std::move(dir)), capacity_(capacity_bytes) {
  std::filesystem::create_directories(dir_);
}

ObjectStore::~ObjectStore() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string ObjectStore::path_of(const ObjectId& id) const { return (dir_ / id.hex()).string(); }

namespace {
// Files kept for reuse: at most this many, each reused only for objects at least half
// its size (a smaller object would hold memory it does not use).
constexpr size_t kMaxPooledFiles = 8;
}  // namespace

void ObjectStore::drop_oldest_pooled_locked() {
  // Truncated first: a process may keep a mapping of the file for its next object
  // (WarmMappings), which would otherwise hold the memory the store now counts as free.
  ::truncate(pool_.front().path.c_str(), 0);
  ::unlink(pool_.front().path.c_str());
  used_ -= pool_.front().size;
  pooled_ -= pool_.front().size;
  pool_.erase(pool_.begin());
}

void ObjectStore::evict_pool_locked(uint64_t need) {
  while (!pool_.empty() && need > capacity_ - used_) drop_oldest_pooled_locked();
}

void ObjectStore::evict_secondary_locked(uint64_t need) {
  while (!secondary_lru_.empty() && need > capacity_ - used_) {
    ObjectId victim = secondary_lru_.front();
    secondary_lru_.pop_front();
    secondary_.erase(victim);
    ++evicted_;
    if (auto it = sizes_.find(victim); it != sizes_.end()) {
      used_ -= it->second;
      sizes_.erase(it);
    }
    ::unlink(path_of(victim).c_str());  // readers' mappings stay valid
  }
}

void ObjectStore::seal_secondary(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (secondary_.count(id) && sizes_.count(id)) secondary_lru_.push_back(id);
}

std::string ObjectStore::find(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sizes_.count(id)) return {};
  if (secondary_.count(id)) {
    auto it = std::find(secondary_lru_.begin(), secondary_lru_.end(), id);
    if (it == secondary_lru_.end()) return {};  // still being written
    secondary_lru_.splice(secondary_lru_.end(), secondary_lru_, it);
  }
  return path_of(id);
}

size_t ObjectStore::num_secondary() const {
  std::lock_guard<std::mutex> lock(mu_);
  return secondary_lru_.size();
}

ObjectStore::Reservation ObjectStore::reserve(const ObjectId& id, uint64_t size, bool secondary) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto old = sizes_.find(id); old != sizes_.end()) {
    // A retry of a task whose worker died after creating its result: the object was
    // never published, so the new attempt replaces it.
    used_ -= old->second;
    sizes_.erase(old);
    secondary_.erase(id);
    secondary_lru_.remove(id);
    ::unlink(path_of(id).c_str());
  }
  if (secondary) secondary_.insert(id);
  // Best fit among pooled files: the smallest that holds the object without wasting half.
  size_t best = pool_.size();
  for (size_t i = 0; i < pool_.size(); ++i) {
    uint64_t s = pool_[i].size;
    if (s >= size && s / 2 <= size && (best == pool_.size() || s < pool_[best].size)) best = i;
  }
  if (best != pool_.size()) {
    PooledFile f = pool_[best];
    pool_.erase(pool_.begin() + static_cast<std::ptrdiff_t>(best));
    pooled_ -= f.size;
    used_ -= f.size;
    if (::rename(f.path.c_str(), path_of(id).c_str()) == 0) {
      // The creator truncates the file to `size`, giving back the tail.
      used_ += size;
      sizes_.emplace(id, size);
      return {path_of(id), {}, true};
    }
    ::unlink(f.path.c_str());
  }
  evict_pool_locked(size);
  evict_secondary_locked(size);
  if (size > capacity_ - used_) {
    secondary_.erase(id);
    return {{},
            "object store full: an object of " + human_bytes(size) + " does not fit (" + human_bytes(used_) +
                " of " + human_bytes(capacity_) +
                " in use); drop ObjectRefs you no longer need or raise InitOptions::object_store_memory"};
  }
  used_ += size;
  sizes_.emplace(id, size);
  return {path_of(id), {}, false};
}

void ObjectStore::remove(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sizes_.find(id);
  if (it == sizes_.end()) return;
  uint64_t size = it->second;
  sizes_.erase(it);
  std::string path = path_of(id);
  bool secondary = secondary_.erase(id) > 0;
  if (secondary) secondary_lru_.remove(id);
  if (size > 0 && !secondary) {
    std::string pooled = (dir_ / ("free-" + std::to_string(next_pool_file_++))).string();
    if (::rename(path.c_str(), pooled.c_str()) == 0) {
      pool_.push_back({pooled, size});
      pooled_ += size;
      while (pool_.size() > kMaxPooledFiles) drop_oldest_pooled_locked();
      return;
    }
  }
  used_ -= size;
  ::unlink(path.c_str());
}

uint64_t ObjectStore::pooled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pooled_;
}

uint64_t ObjectStore::used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

size_t ObjectStore::num_objects() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sizes_.size();
}

uint64_t ObjectStore::num_evicted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return evicted_;
}

}  // namespace gantry::internal
