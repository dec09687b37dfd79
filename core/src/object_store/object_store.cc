#include "object_store/object_store.h"

#include <unistd.h>

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

ObjectStore::ObjectStore(std::filesystem::path dir, uint64_t capacity_bytes)
    : dir_(std::move(dir)), capacity_(capacity_bytes) {
  std::filesystem::create_directories(dir_);
}

ObjectStore::~ObjectStore() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string ObjectStore::path_of(const ObjectId& id) const { return (dir_ / id.hex()).string(); }

ObjectStore::Reservation ObjectStore::reserve(const ObjectId& id, uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sizes_.count(id) != 0) return {{}, "object " + id.hex() + " already exists in the store"};
  if (size > capacity_ - used_) {
    return {{},
            "object store full: an object of " + human_bytes(size) + " does not fit (" + human_bytes(used_) +
                " of " + human_bytes(capacity_) +
                " in use); drop ObjectRefs you no longer need or raise InitOptions::object_store_memory"};
  }
  used_ += size;
  sizes_.emplace(id, size);
  return {path_of(id), {}};
}

void ObjectStore::remove(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sizes_.find(id);
  if (it == sizes_.end()) return;
  used_ -= it->second;
  sizes_.erase(it);
  ::unlink(path_of(id).c_str());
}

uint64_t ObjectStore::used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

size_t ObjectStore::num_objects() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sizes_.size();
}

}  // namespace gantry::internal
