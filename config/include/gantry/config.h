#pragma once

#include <initializer_list>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "gantry/errors.h"  // IWYU pragma: keep

namespace gantry {

/// JSON values: configs, metrics and checkpoint metadata (nlohmann::json).
using Json = nlohmann::json;

/// A configuration: a JSON object of named values. A training run's config (every worker
/// gets it), a sweep trial's sampled values.
///
///     train::Config config = {{"lr", 0.01}, {"epochs", 10}};
///     double lr = ctx.config().get<double>("lr");
///     int warmup = ctx.config().get<int>("warmup", 0);  // with a default
class Config {
 public:
  Config() : json_(Json::object()) {}
  Config(Json json);  // NOLINT: implicit, a JSON object is a config
  Config(Json::initializer_list_t init) : Config(Json(init)) {}

  /// The value at `key` as `T`. Throws gantry::Error naming the key when it is missing
  /// or does not convert to `T`.
  template <typename T>
  T get(const std::string& key) const {
    const Json& v = at(key);
    try {
      return v.get<T>();
    } catch (const Json::exception& e) {
      throw_wrong_type(key, e.what());
    }
  }
  /// The value at `key`, or `fallback` when the key is absent.
  template <typename T>
  T get(const std::string& key, T fallback) const {
    return contains(key) ? get<T>(key) : std::move(fallback);
  }
  bool contains(const std::string& key) const { return json_.contains(key); }
  /// Sets `key` (for merging a sweep's values into a trainer's config).
  void set(const std::string& key, Json value) { json_[key] = std::move(value); }
  /// This config with `other`'s keys added or replaced (recursively for objects).
  Config merged(const Config& other) const;

  const Json& json() const { return json_; }

 private:
  const Json& at(const std::string& key) const;
  [[noreturn]] void throw_wrong_type(const std::string& key, const char* why) const;

  Json json_;
};

}  // namespace gantry
