#include "object_store/shm_object.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "gantry/errors.h"

namespace gantry::internal {
namespace {

std::string errno_text() { return std::strerror(errno); }

}  // namespace

std::unique_ptr<MappedFile> MappedFile::create(const std::string& path, size_t size, bool reuse) {
  int fd = reuse ? ::open(path.c_str(), O_RDWR | O_CLOEXEC) : ::open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) throw Error("cannot create shared-memory object " + path + ": " + errno_text());
  if (size > 0 && ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    std::string why = errno_text();
    ::close(fd);
    ::unlink(path.c_str());
    throw ObjectStoreFullError("cannot size shared-memory object " + path + " to " + std::to_string(size) +
                               " bytes: " + why);
  }
  void* p = nullptr;
  if (size > 0) {
    // Populate up front: one pass of page faults in the kernel is much cheaper than a
    // fault per page while the value is written.
    p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string why = errno_text();
      ::close(fd);
      ::unlink(path.c_str());
      throw ObjectStoreFullError("cannot map shared-memory object " + path + ": " + why);
    }
  }
  return std::unique_ptr<MappedFile>(new MappedFile(path, static_cast<uint8_t*>(p), size, size, fd));
}

std::unique_ptr<MappedFile> MappedFile::open_read_only(const std::string& path) { return open_existing(path, false); }

std::unique_ptr<MappedFile> MappedFile::open_copy_on_write(const std::string& path) {
  return open_existing(path, true);
}

std::unique_ptr<MappedFile> MappedFile::open_existing(const std::string& path, bool copy_on_write) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ObjectLostError("shared-memory object " + path + " is gone: " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string why = errno_text();
    ::close(fd);
    throw ObjectLostError("cannot stat shared-memory object " + path + ": " + why);
  }
  size_t size = static_cast<size_t>(st.st_size);
  void* p = nullptr;
  if (size > 0) {
    // A private mapping may be writable although the file is open read-only: writes
    // never reach the file.
    p = copy_on_write ? ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
                      : ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      std::string why = errno_text();
      ::close(fd);
      throw Error("cannot map shared-memory object " + path + ": " + why);
    }
  }
  ::close(fd);
  return std::unique_ptr<MappedFile>(new MappedFile(path, static_cast<uint8_t*>(p), size, size, -1));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, mapped_);
  if (fd_ >= 0) ::close(fd_);
}

WarmMappings::~WarmMappings() = default;

void WarmMappings::take_unlinked_locked(std::vector<std::unique_ptr<MappedFile>>& out) {
  for (auto it = kept_.begin(); it != kept_.end();) {
    struct stat st {};
    if (::fstat((*it)->fd_, &st) != 0 || st.st_nlink == 0) {
      out.push_back(std::move(*it));
      it = kept_.erase(it);
    } else {
      ++it;
    }
  }
}

std::unique_ptr<MappedFile> WarmMappings::create(const std::string& path, size_t size, bool reuse) {
  std::vector<std::unique_ptr<MappedFile>> gone;  // unmapped at return, off the lock
  if (reuse) {
    struct stat st {};
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    bool known = fd >= 0 && ::fstat(fd, &st) == 0;
    if (fd >= 0) ::close(fd);
    std::lock_guard<std::mutex> lock(mu_);
    take_unlinked_locked(gone);
    for (auto it = kept_.begin(); known && it != kept_.end(); ++it) {
      struct stat kept_st {};
      MappedFile& f = **it;
      if (::fstat(f.fd_, &kept_st) != 0 || kept_st.st_dev != st.st_dev || kept_st.st_ino != st.st_ino) continue;
      // That file, handed back: resized, written through the mapping we have. Pages cut
      // off by an earlier shrink come back as fresh zero pages on first touch.
      if (size == 0 || size > f.mapped_ || ::ftruncate(f.fd_, static_cast<off_t>(size)) != 0) {
        gone.push_back(std::move(*it));
        kept_.erase(it);
        break;
      }
      std::unique_ptr<MappedFile> hit = std::move(*it);
      kept_.erase(it);
      hit->path_ = path;
      hit->size_ = size;
      return hit;
    }
  }
  return MappedFile::create(path, size, reuse);
}

void WarmMappings::keep(std::unique_ptr<MappedFile> file) {
  std::vector<std::unique_ptr<MappedFile>> gone;
  if (!file || file->fd_ < 0 || file->mapped_ < min_bytes_ || max_kept_ == 0) return;  // unmapped here
  std::lock_guard<std::mutex> lock(mu_);
  take_unlinked_locked(gone);
  kept_.push_back(std::move(file));
  while (kept_.size() > max_kept_) {
    gone.push_back(std::move(kept_.front()));
    kept_.pop_front();
  }
}

void WarmMappings::drop_unlinked() {
  std::vector<std::unique_ptr<MappedFile>> gone;
  std::lock_guard<std::mutex> lock(mu_);
  take_unlinked_locked(gone);
}

size_t WarmMappings::num_kept() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kept_.size();
}

}  // namespace gantry::internal
