#include "collective/kv_store.h"

#include "gantry/kv.h"

namespace gantry::collective::detail {

void KvStore::set(const std::string& key, const std::string& value) {
  kv::put(prefix_ + key, value, {.overwrite = true, .cluster = cluster_});
}

std::string KvStore::get(const std::string& key, std::chrono::milliseconds timeout) {
  auto value = kv::wait(prefix_ + key, timeout, {.cluster = cluster_});
  if (!value)
    throw CollectiveError("rendezvous key '" + prefix_ + key + "' was not set within " +
                          std::to_string(timeout.count()) + " ms: a rank of the group did not arrive");
  return *value;
}

int64_t KvStore::add(const std::string& key, int64_t delta) {
  return kv::add(prefix_ + key, delta, {.cluster = cluster_});
}

}  // namespace gantry::collective::detail
