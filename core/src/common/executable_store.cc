#include "common/executable_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "gantry/errors.h"

namespace gantry::internal {

ExecutableStore::ExecutableStore(std::string dir) : dir_(std::move(dir)) {}

bool ExecutableStore::valid_digest(const std::string& digest) {
  if (digest.size() != 64) return false;
  for (char c : digest)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string ExecutableStore::path_of(const std::string& digest) const { return dir_ + "/" + digest; }

bool ExecutableStore::has(const std::string& digest) const {
  return valid_digest(digest) && ::access(path_of(digest).c_str(), X_OK) == 0;
}

std::unique_ptr<ExecutableStore::Writer> ExecutableStore::begin(const std::string& digest, uint64_t size) const {
  if (!valid_digest(digest)) throw Error("not a SHA-256 digest: '" + digest + "'");
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) throw Error("cannot create " + dir_ + ": " + ec.message());
  std::unique_ptr<Writer> w(new Writer(path_of(digest), digest, size));
  if (w->fd_ < 0) throw Error(w->error_);
  return w;
}

ExecutableStore::Writer::Writer(std::string final_path, std::string digest, uint64_t size)
    : final_path_(std::move(final_path)), digest_(std::move(digest)), expected_(size) {
  static std::atomic<uint64_t> counter{0};
  temp_path_ = final_path_ + ".part." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
  if (fd_ < 0) error_ = "cannot create " + temp_path_ + ": " + std::strerror(errno);
}

ExecutableStore::Writer::~Writer() {
  if (fd_ >= 0) ::close(fd_);
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

bool ExecutableStore::Writer::append(const void* data, size_t size) {
  if (fd_ < 0) return false;
  if (written_ + size > expected_) {
    error_ = "more bytes than the " + std::to_string(expected_) + " announced";
    return false;
  }
  const char* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd_, p + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error_ = "cannot write " + temp_path_ + ": " + std::strerror(errno);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  hash_.update(data, size);
  written_ += size;
  return true;
}

std::string ExecutableStore::Writer::commit() {
  if (!error_.empty()) return error_;
  if (written_ != expected_)
    return "got " + std::to_string(written_) + " of " + std::to_string(expected_) + " bytes";
  std::string got = hash_.hex();
  if (got != digest_) return "content does not match its digest (got " + got.substr(0, 12) + "...)";
  if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
    fd_ = -1;
    return "cannot finish " + temp_path_ + ": " + std::strerror(errno);
  }
  fd_ = -1;
  if (::chmod(temp_path_.c_str(), 0755) != 0 || ::rename(temp_path_.c_str(), final_path_.c_str()) != 0)
    return "cannot put " + final_path_ + " in place: " + std::strerror(errno);
  temp_path_.clear();
  return {};
}

}  // namespace gantry::internal
