#include "runtime/memory_store.h"

#include "gantry/errors.h"

namespace gantry::internal {

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

void MemoryStore::add_pending(const ObjectId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.try_emplace(id);
}

bool MemoryStore::put(const ObjectId& id, ValuePtr value) {
  std::vector<ReadyCallback> callbacks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return false;
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
  it->second.value = nullptr;
  return true;
}

void MemoryStore::put_new(const ObjectId& id, ValuePtr value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_[id].value = std::move(value);
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
  }
  cv_.notify_all();
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
  entries_.erase(it);
  return value;
}

size_t MemoryStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace gantry::internal
