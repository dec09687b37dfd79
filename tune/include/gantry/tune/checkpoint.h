#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "gantry/config.h"
#include "gantry/errors.h"

namespace gantry::tune {

/// A trial's saved state: named JSON values and, for larger state, files. It travels
/// from the trial's node to the experiment's storage through the object store (no
/// shared file system), is stored as a directory `checkpoint_NNNNNN` in the trial's
/// directory, and comes back to the trial when it resumes (or to another trial that
/// PBT clones it into).
///
///     t.report({{"loss", loss}}, tune::Checkpoint::with("step", step).set("lr", lr));
///     if (auto ck = t.checkpoint()) start = ck->read<int>("step") + 1;
class Checkpoint {
 public:
  Checkpoint() = default;
  /// A checkpoint holding one value; add more with `set`.
  static Checkpoint with(const std::string& key, Json value);
  /// A checkpoint of a directory's files (read now, into memory); its
  /// `checkpoint.json`, if any, gives the values.
  static Checkpoint from_directory(const std::string& path);

  Checkpoint& set(const std::string& key, Json value) &;
  Checkpoint&& set(const std::string& key, Json value) &&;
  /// Adds a file (relative path -> contents).
  Checkpoint& add_file(const std::string& name, std::string contents) &;
  Checkpoint&& add_file(const std::string& name, std::string contents) &&;

  /// The value at `key` as `T`; throws gantry::Error naming the key when it is missing or
  /// of another type.
  template <typename T>
  T read(const std::string& key) const {
    const Json& v = value(key);
    try {
      return v.get<T>();
    } catch (const Json::exception& e) {
      throw Error("checkpoint value \"" + key + "\" is " + v.dump() + ", which does not convert: " + e.what());
    }
  }
  bool contains(const std::string& key) const { return values().contains(key); }
  const Json& values() const {
    ensure_loaded();
    return values_;
  }
  /// File names (relative paths) and contents.
  const std::map<std::string, std::string>& files() const {
    ensure_loaded();
    return files_;
  }
  /// The contents of file `name`; throws gantry::Error when there is none.
  const std::string& file(const std::string& name) const;
  /// Writes the files and `checkpoint.json` into `path` (created), and returns it.
  std::string to_directory(const std::string& path) const;
  /// Where it is stored in the experiment (empty for one not stored yet).
  const std::string& path() const { return path_; }
  bool empty() const { return values().empty() && files().empty(); }

  /// Reads a stored checkpoint directory (what `to_directory` wrote).
  static Checkpoint load(const std::string& path);
  /// Refers to a stored checkpoint directory, read on first use (ResultGrid's
  /// checkpoints: a sweep of many trials does not hold them all in memory).
  static Checkpoint at(const std::string& path);

 private:
  const Json& value(const std::string& key) const;
  /// Reads the directory of a checkpoint made by `at`, once.
  void ensure_loaded() const;

  // Mutable for `at`: a const checkpoint reads its directory on first use.
  mutable Json values_ = Json::object();
  mutable std::map<std::string, std::string> files_;
  mutable bool unread_ = false;
  std::string path_;
};

}  // namespace gantry::tune
