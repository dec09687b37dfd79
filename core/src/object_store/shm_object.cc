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
  ::close(fd);
  return std::unique_ptr<MappedFile>(new MappedFile(path, static_cast<uint8_t*>(p), size));
}

std::unique_ptr<MappedFile> MappedFile::open_read_only(const std::string& path) {
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
    p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      std::string why = errno_text();
      ::close(fd);
      throw Error("cannot map shared-memory object " + path + ": " + why);
    }
  }
  ::close(fd);
  return std::unique_ptr<MappedFile>(new MappedFile(path, static_cast<uint8_t*>(p), size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace gantry::internal
