#include "gantry/tune/checkpoint.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace gantry::tune {
namespace fs = std::filesystem;

namespace {

constexpr const char* kValuesFile = "checkpoint.json";

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error("cannot read checkpoint file " + file.string() + ": " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Refuses names that would leave the checkpoint's directory when written.
void check_name(const std::string& name) {
  fs::path p(name);
  if (name.empty() || p.is_absolute()) throw Error("checkpoint file name \"" + name + "\" must be a relative path");
  for (const auto& part : p) {
    if (part == "..") throw Error("checkpoint file name \"" + name + "\" may not contain '..'");
  }
  if (name == kValuesFile) throw Error("checkpoint.json is where a checkpoint's values go; name the file otherwise");
}

}  // namespace

Checkpoint Checkpoint::with(const std::string& key, Json value) {
  Checkpoint c;
  c.values_[key] = std::move(value);
  return c;
}

Checkpoint Checkpoint::from_directory(const std::string& path) { return load(path); }

Checkpoint Checkpoint::at(const std::string& path) {
  Checkpoint c;
  c.path_ = path;
  c.unread_ = true;
  return c;
}

void Checkpoint::ensure_loaded() const {
  if (!unread_) return;
  Checkpoint loaded = load(path_);
  values_ = std::move(loaded.values_);
  files_ = std::move(loaded.files_);
  unread_ = false;
}

Checkpoint& Checkpoint::set(const std::string& key, Json value) & {
  ensure_loaded();
  values_[key] = std::move(value);
  return *this;
}
Checkpoint&& Checkpoint::set(const std::string& key, Json value) && {
  ensure_loaded();
  values_[key] = std::move(value);
  return std::move(*this);
}

Checkpoint& Checkpoint::add_file(const std::string& name, std::string contents) & {
  check_name(name);
  ensure_loaded();
  files_[name] = std::move(contents);
  return *this;
}
Checkpoint&& Checkpoint::add_file(const std::string& name, std::string contents) && {
  check_name(name);
  ensure_loaded();
  files_[name] = std::move(contents);
  return std::move(*this);
}

const std::string& Checkpoint::file(const std::string& name) const {
  ensure_loaded();
  auto it = files_.find(name);
  if (it == files_.end()) {
    std::string names;
    for (const auto& [n, _] : files_) names += (names.empty() ? "" : ", ") + n;
    throw Error("the checkpoint has no file \"" + name + "\" (its files: " + (names.empty() ? "none" : names) + ")");
  }
  return it->second;
}

const Json& Checkpoint::value(const std::string& key) const {
  ensure_loaded();
  auto it = values_.find(key);
  if (it != values_.end()) return *it;
  std::string keys;
  for (auto k = values_.begin(); k != values_.end(); ++k) keys += (keys.empty() ? "" : ", ") + k.key();
  throw Error("the checkpoint has no value \"" + key + "\" (its values: " + (keys.empty() ? "none" : keys) + ")");
}

std::string Checkpoint::to_directory(const std::string& path) const {
  ensure_loaded();
  fs::create_directories(path);
  for (const auto& [name, contents] : files_) {
    fs::path file = fs::path(path) / name;
    fs::create_directories(file.parent_path());
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << contents;
    if (!out) throw Error("cannot write checkpoint file " + file.string() + ": " + std::strerror(errno));
  }
  std::ofstream out(fs::path(path) / kValuesFile, std::ios::trunc);
  out << values_.dump();
  if (!out) throw Error("cannot write " + (fs::path(path) / kValuesFile).string());
  return path;
}

Checkpoint Checkpoint::load(const std::string& path) {
  if (!fs::is_directory(path)) throw Error("checkpoint directory " + path + " does not exist");
  Checkpoint c;
  for (const auto& entry : fs::recursive_directory_iterator(path)) {
    if (!entry.is_regular_file()) continue;
    std::string name = fs::relative(entry.path(), path).string();
    if (name == kValuesFile) {
      try {
        c.values_ = Json::parse(read_file(entry.path()));
      } catch (const Json::exception& e) {
        throw Error("checkpoint " + path + " has a corrupt checkpoint.json: " + e.what());
      }
      if (!c.values_.is_object()) throw Error("checkpoint " + path + "'s checkpoint.json is not a JSON object");
    } else {
      c.files_[name] = read_file(entry.path());
    }
  }
  c.path_ = path;
  return c;
}

}  // namespace gantry::tune
