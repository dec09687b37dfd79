#include "head/kv_table.h"

#include <charconv>
#include <stdexcept>

namespace gantry::internal {

bool KvTable::put(const std::string& ns, const std::string& key, std::string value, bool overwrite,
                  std::vector<Fired>& fired) {
  Key k{ns, key};
  auto it = values_.find(k);
  if (it != values_.end()) {
    if (!overwrite) return false;
    it->second = std::move(value);
  } else {
    it = values_.emplace(k, std::move(value)).first;
  }
  fire_locked(k, it->second, fired);
  return true;
}

std::optional<std::string> KvTable::get(const std::string& ns, const std::string& key) const {
  auto it = values_.find(Key{ns, key});
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

bool KvTable::del(const std::string& ns, const std::string& key) { return values_.erase(Key{ns, key}) > 0; }

int64_t KvTable::add(const std::string& ns, const std::string& key, int64_t delta, std::vector<Fired>& fired) {
  Key k{ns, key};
  int64_t current = 0;
  auto it = values_.find(k);
  if (it != values_.end()) {
    const std::string& text = it->second;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), current);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty())
      throw std::invalid_argument("key '" + key + "' holds a value that is not a counter (" +
                                  std::to_string(text.size()) + " bytes, not a decimal integer)");
  }
  int64_t sum = 0;
  if (__builtin_add_overflow(current, delta, &sum))
    throw std::overflow_error("adding " + std::to_string(delta) + " to counter '" + key + "' (" +
                              std::to_string(current) + ") overflows int64");
  std::string text = std::to_string(sum);
  if (it == values_.end()) it = values_.emplace(k, std::move(text)).first;
  else it->second = std::move(text);
  fire_locked(k, it->second, fired);
  return sum;
}

std::vector<std::string> KvTable::keys(const std::string& ns, const std::string& prefix) const {
  std::vector<std::string> out;
  for (auto it = values_.lower_bound(Key{ns, prefix}); it != values_.end(); ++it) {
    if (it->first.first != ns || it->first.second.compare(0, prefix.size(), prefix) != 0) break;
    out.push_back(it->first.second);
  }
  return out;
}

uint64_t KvTable::add_waiter(const std::string& ns, const std::string& key, Waiter waiter) {
  uint64_t id = next_waiter_++;
  Key k{ns, key};
  waiters_.emplace(id, Waiting{k, std::move(waiter)});
  waiters_by_key_.emplace(std::move(k), id);
  return id;
}

bool KvTable::remove_waiter(uint64_t id) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return false;
  auto [begin, end] = waiters_by_key_.equal_range(it->second.key);
  for (auto w = begin; w != end; ++w)
    if (w->second == id) {
      waiters_by_key_.erase(w);
      break;
    }
  waiters_.erase(it);
  return true;
}

void KvTable::fire_locked(const Key& key, const std::string& value, std::vector<Fired>& fired) {
  auto [begin, end] = waiters_by_key_.equal_range(key);
  for (auto w = begin; w != end; ++w) {
    auto it = waiters_.find(w->second);
    fired.push_back({std::move(it->second.waiter), value, {}});
    waiters_.erase(it);
  }
  waiters_by_key_.erase(begin, end);
}

void KvTable::drop_namespace(const std::string& ns, const std::string& reason, std::vector<Fired>& fired) {
  auto first = values_.lower_bound(Key{ns, ""});
  auto last = first;
  while (last != values_.end() && last->first.first == ns) ++last;
  values_.erase(first, last);
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (it->second.key.first != ns) {
      ++it;
      continue;
    }
    uint64_t id = it->first;
    ++it;
    Waiter waiter = std::move(waiters_.at(id).waiter);
    remove_waiter(id);
    fired.push_back({std::move(waiter), std::nullopt, reason});
  }
}

void KvTable::fail_all_waiters(const std::string& reason, std::vector<Fired>& fired) {
  for (auto& [id, waiting] : waiters_) fired.push_back({std::move(waiting.waiter), std::nullopt, reason});
  waiters_.clear();
  waiters_by_key_.clear();
}

void run_fired(std::vector<KvTable::Fired>& fired) {
  for (auto& f : fired) f.waiter(f.value ? &*f.value : nullptr, f.reason);
  fired.clear();
}

}  // namespace gantry::internal
