#include <map>
#include <mutex>
#include <string>

#include "gantry/errors.h"
#include "gantry/tune/trial_context.h"

namespace gantry::tune::detail {
namespace {

// Filled during static initialisation (GANTRY_TRAINABLE), read-only afterwards.
struct TrainableRegistry {
  std::mutex mu;  // guards both maps while registrations run
  std::map<std::string, Trainable> by_name;
  std::map<Trainable, std::string> by_function;
};

TrainableRegistry& registry() {
  static TrainableRegistry r;
  return r;
}

}  // namespace

bool register_trainable(const char* name, Trainable fn) {
  TrainableRegistry& r = registry();
  std::lock_guard lock(r.mu);
  auto [it, added] = r.by_name.emplace(name, fn);
  if (!added && it->second != fn) {
    throw Error(std::string("two different trainables are registered as \"") + name + "\"");
  }
  r.by_function[fn] = name;
  return true;
}

std::string trainable_name(Trainable fn) {
  TrainableRegistry& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.by_function.find(fn);
  return it == r.by_function.end() ? std::string() : it->second;
}

Trainable find_trainable(const std::string& name) {
  TrainableRegistry& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.by_name.find(name);
  return it == r.by_name.end() ? nullptr : it->second;
}

}  // namespace gantry::tune::detail
