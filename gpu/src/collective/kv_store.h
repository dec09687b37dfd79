#pragma once

#include <string>

#include "collective/backend.h"

namespace gantry::collective::detail {

/// A Store over the head's key-value store (gantry/kv.h), every key under `prefix`, in
/// the job's namespace or the cluster's. Blocking gets are kv::wait: the head answers
/// when the key is written.
class KvStore final : public Store {
 public:
  KvStore(std::string prefix, bool cluster) : prefix_(std::move(prefix)), cluster_(cluster) {}
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override;
  int64_t add(const std::string& key, int64_t delta) override;

 private:
  std::string prefix_;
  bool cluster_;
};

}  // namespace gantry::collective::detail
