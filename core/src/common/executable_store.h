#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/sha256.h"

namespace gantry::internal {

/// A directory of executables named by the SHA-256 of their contents: the head keeps the
/// programs drivers send it, agents the ones they fetch from the head. A file appears
/// under its digest only once it is complete and its digest checked. Thread-safe (the
/// file system is the only state).
class ExecutableStore {
 public:
  explicit ExecutableStore(std::string dir);

  /// True for 64 lowercase hex digits.
  static bool valid_digest(const std::string& digest);
  /// Where the executable with `digest` lives (whether or not it is there).
  std::string path_of(const std::string& digest) const;
  bool has(const std::string& digest) const;

  /// Writes one executable: append its bytes in order, then commit.
  class Writer {
   public:
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;
    /// False (and error() says why) when the bytes cannot be written.
    bool append(const void* data, size_t size);
    /// Checks size and digest, makes it executable and puts it in place. Empty on
    /// success, else why not (the partial file is removed).
    std::string commit();
    const std::string& error() const { return error_; }

   private:
    friend class ExecutableStore;
    Writer(std::string final_path, std::string digest, uint64_t size);
    std::string final_path_, temp_path_, digest_, error_;
    uint64_t expected_ = 0, written_ = 0;
    int fd_ = -1;
    Sha256 hash_;
  };
  /// Starts writing the executable with `digest` and `size` bytes. Throws gantry::Error
  /// for an invalid digest or when the directory cannot be written.
  std::unique_ptr<Writer> begin(const std::string& digest, uint64_t size) const;

 private:
  std::string dir_;
};

}  // namespace gantry::internal
