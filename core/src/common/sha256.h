#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace gantry::internal {

/// SHA-256 over data given in pieces (OpenSSL underneath).
///
///     Sha256 h;
///     h.update(a, n);
///     std::string hex = h.hex();  // 64 lowercase hex digits; ends the hash
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t size);
  std::string hex();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// The SHA-256 of a file's contents in hex, and its size; empty with `error` set when it
/// cannot be read.
std::string sha256_file(const std::string& path, uint64_t* size, std::string* error);

}  // namespace gantry::internal
