#include "gantry/config.h"

#include <string>

namespace gantry {
namespace {

void merge_into(Json& into, const Json& from) {
  for (auto it = from.begin(); it != from.end(); ++it) {
    Json& slot = into[it.key()];
    if (slot.is_object() && it.value().is_object()) {
      merge_into(slot, it.value());
    } else {
      slot = it.value();
    }
  }
}

}  // namespace

Config::Config(Json json) : json_(std::move(json)) {
  if (json_.is_null()) json_ = Json::object();
  if (!json_.is_object()) {
    throw Error("gantry::Config must be a JSON object of named values, not " + json_.dump());
  }
}

Config Config::merged(const Config& other) const {
  Json out = json_;
  merge_into(out, other.json_);
  return Config(std::move(out));
}

const Json& Config::at(const std::string& key) const {
  auto it = json_.find(key);
  if (it != json_.end()) return *it;
  std::string keys;
  for (auto k = json_.begin(); k != json_.end(); ++k) keys += (keys.empty() ? "" : ", ") + k.key();
  throw Error("the config has no \"" + key + "\" (its keys: " + (keys.empty() ? "none" : keys) + ")");
}

void Config::throw_wrong_type(const std::string& key, const char* why) const {
  throw Error("the config's \"" + key + "\" is " + json_.at(key).dump() +
              ", which does not convert to the type asked for: " + why);
}

}  // namespace gantry
