#include "runtime/memory_store.h"

#include <algorithm>

#include "gantry/errors.h"

namespace gantry::internal {
namespace {

// Tells the core this is a spin-wait (frees the pipeline for a sibling hyperthread).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

void inline_ready_value(proto::TaskArg& arg, const proto::ObjectValue& value, size_t inline_threshold) {
  if (value.has_error()) return;
  if (value.has_shm()) {
    proto::ShmLocation shm = value.shm();
    *arg.mutable_shm() = std::move(shm);
  } else if (value.inline_data().size() < inline_threshold) {
    std::string data = value.inline_data();
    arg.set_inline_data(std::move(data));
  }
}

void MemoryStore::count_pending_locked(int delta) {
  pending_ += delta;
  version_.fetch_add(1, std::memory_order_release);
}

void MemoryStore::add_pending(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (entries_.try_emplace(id).second) count_pending_locked(+1);
}

bool MemoryStore::put(const ObjectId& id, ValuePtr value) {
  std::vector<ReadyCallback> callbacks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return false;
    if (!it->second.value) count_pending_locked(-1);
    it->second.value = value;
    callbacks.swap(it->second.callbacks);
  }
  cv_.notify_all();
  for (auto& cb : callbacks) cb(value);
  return true;
}

bool MemoryStore::reset_pending(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  if (it->second.value) count_pending_locked(+1);
  it->second.value = nullptr;
  return true;
}

void MemoryStore::put_new(const ObjectId& id, ValuePtr value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, inserted] = entries_.try_emplace(id);
    if (!inserted && !it->second.value) count_pending_locked(-1);
    it->second.value = std::move(value);
  }
  cv_.notify_all();
}

ValuePtr MemoryStore::get_if_ready(const ObjectId& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second.value;
}

bool MemoryStore::contains(const ObjectId& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(id) != 0;
}

void MemoryStore::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    version_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
}

ValuePtr MemoryStore::spin_for(const ObjectId& id) {
  // Per thread: calls left to skip, and the next skip after a spin that ran out.
  thread_local int skip = 0;
  thread_local int backoff = 0;
  if (spin_budget_.count() == 0) return nullptr;
  if (skip > 0) {
    --skip;
    return nullptr;
  }
  auto until = std::chrono::steady_clock::now() + spin_budget_;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    auto it = entries_.find(id);
    if (it == entries_.end()) return nullptr;  // wait() reports it
    if (it->second.value) {
      backoff = 0;
      return it->second.value;
    }
    if (closed_ || pending_ != 1) return nullptr;
    uint64_t seen = version_.load(std::memory_order_acquire);
    lock.unlock();
    bool changed = false;
    bool out_of_time = false;
    for (int i = 1; !changed && !out_of_time; ++i) {
      cpu_relax();
      changed = version_.load(std::memory_order_acquire) != seen;
      // The clock costs more than a pause: read it every 64 rounds (about 2 µs).
      if (i % 64 == 0) out_of_time = std::chrono::steady_clock::now() >= until;
    }
    lock.lock();
    if (out_of_time && !changed) {
      backoff = std::clamp(backoff * 2, 1, 64);
      skip = backoff;
      return nullptr;
    }
  }
}

ValuePtr MemoryStore::wait(const ObjectId& id, Deadline deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (closed_) throw Error("gantry is shutting down");
    auto it = entries_.find(id);
    if (it == entries_.end())
      throw ObjectLostError("object " + id.hex() + " is unknown to its owner: it was freed (no ObjectRef "
                            "to it was left) or never existed");
    if (it->second.value) return it->second.value;
    if (!deadline) {
      cv_.wait(lock);
    } else if (cv_.wait_until(lock, *deadline) == std::cv_status::timeout) {
      auto again = entries_.find(id);
      return again == entries_.end() ? nullptr : again->second.value;
    }
  }
}

std::vector<bool> MemoryStore::wait_many(const std::vector<ObjectId>& ids, size_t num_ready, Deadline deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<bool> ready(ids.size(), false);
  while (true) {
    if (closed_) throw Error("gantry is shutting down");
    size_t n = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      auto it = entries_.find(ids[i]);
      ready[i] = it == entries_.end() || it->second.value != nullptr;
      n += ready[i];
    }
    if (n >= num_ready) return ready;
    if (!deadline) {
      cv_.wait(lock);
    } else if (cv_.wait_until(lock, *deadline) == std::cv_status::timeout) {
      for (size_t i = 0; i < ids.size(); ++i) {
        auto it = entries_.find(ids[i]);
        ready[i] = it == entries_.end() || it->second.value != nullptr;
      }
      return ready;
    }
  }
}

bool MemoryStore::on_ready(const ObjectId& id, ReadyCallback callback) {
  ValuePtr value;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return false;
    if (!it->second.value) {
      it->second.callbacks.push_back(std::move(callback));
      return true;
    }
    value = it->second.value;
  }
  callback(value);
  return true;
}

ValuePtr MemoryStore::erase(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return nullptr;
  ValuePtr value = std::move(it->second.value);
  if (!value) count_pending_locked(-1);
  entries_.erase(it);
  return value;
}

size_t MemoryStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace gantry::internal
