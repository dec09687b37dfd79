#include "rpc/frame_socket.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "gantry/errors.h"

namespace gantry::internal {
namespace {

bool fill_address(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.size() >= sizeof addr->sun_path) return false;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

}  // namespace

FrameSocket::~FrameSocket() {
  if (fd_ >= 0) ::close(fd_);
}

std::unique_ptr<FrameSocket> FrameSocket::connect_unix(const std::string& path, std::string* error) {
  sockaddr_un addr;
  if (!fill_address(path, &addr)) {
    *error = "socket path too long: " + path;
    return nullptr;
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::strerror(errno);
    return nullptr;
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    *error = "cannot connect to " + path + ": " + std::strerror(errno);
    ::close(fd);
    return nullptr;
  }
  return std::make_unique<FrameSocket>(fd);
}

bool FrameSocket::write(const std::string& payload) {
  if (payload.size() > kMaxFrame) {
    error_ = "frame of " + std::to_string(payload.size()) + " bytes is too large";
    return false;
  }
  uint32_t n = static_cast<uint32_t>(payload.size());
  iovec iov[2] = {{&n, sizeof n}, {const_cast<char*>(payload.data()), payload.size()}};
  size_t total = sizeof n + payload.size();
  size_t done = 0;
  int idx = 0;
  while (done < total) {
    msghdr msg{};
    msg.msg_iov = iov + idx;
    msg.msg_iovlen = 2 - idx;
    ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      error_ = std::strerror(errno);
      return false;
    }
    done += static_cast<size_t>(w);
    size_t left = static_cast<size_t>(w);
    while (idx < 2 && left >= iov[idx].iov_len) {
      left -= iov[idx].iov_len;
      ++idx;
    }
    if (idx < 2) {
      iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + left;
      iov[idx].iov_len -= left;
    }
  }
  return true;
}

bool FrameSocket::read(std::string* out) {
  auto available = [&] { return end_ - start_; };
  // Reads more bytes; false at end of stream or on error.
  auto fill = [&](size_t need) {
    if (start_ > 0 && buffer_.size() - end_ < need) {
      std::memmove(buffer_.data(), buffer_.data() + start_, available());
      end_ -= start_;
      start_ = 0;
    }
    if (buffer_.size() - end_ < need) buffer_.resize(std::max(buffer_.size() * 2, end_ + std::max<size_t>(need, 65536)));
    while (true) {
      ssize_t r = ::read(fd_, buffer_.data() + end_, buffer_.size() - end_);
      if (r > 0) {
        end_ += static_cast<size_t>(r);
        return true;
      }
      if (r < 0 && errno == EINTR) continue;
      reached_end_ = r == 0;
      error_ = reached_end_ ? "end of stream" : std::strerror(errno);
      return false;
    }
  };
  while (available() < 4)
    if (!fill(4 - available())) return false;
  uint32_t n;
  std::memcpy(&n, buffer_.data() + start_, 4);
  if (n > kMaxFrame) {
    error_ = "frame length " + std::to_string(n) + " is over the limit";
    return false;
  }
  while (available() < 4 + static_cast<size_t>(n))
    if (!fill(4 + n - available())) return false;
  out->assign(buffer_.data() + start_ + 4, n);
  start_ += 4 + n;
  if (start_ == end_) start_ = end_ = 0;
  return true;
}

void FrameSocket::shutdown_write() { ::shutdown(fd_, SHUT_WR); }

void FrameSocket::shutdown_both() { ::shutdown(fd_, SHUT_RDWR); }

FrameListener::FrameListener(const std::string& path) : path_(path) {
  sockaddr_un addr;
  if (!fill_address(path, &addr)) throw Error("socket path too long: " + path);
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw Error("cannot create a socket: " + std::string(std::strerror(errno)));
  ::unlink(path.c_str());
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 128) != 0) {
    std::string why = std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    throw Error("cannot listen on " + path + ": " + why);
  }
}

FrameListener::~FrameListener() {
  shutdown();
  if (fd_ >= 0) ::close(fd_);
  ::unlink(path_.c_str());
}

std::unique_ptr<FrameSocket> FrameListener::accept() {
  while (true) {
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return std::make_unique<FrameSocket>(fd);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    return nullptr;
  }
}

void FrameListener::shutdown() {
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

std::string task_socket_path(const std::string& worker_address) {
  const std::string prefix = "unix:", suffix = ".sock";
  if (worker_address.rfind(prefix, 0) != 0 || worker_address.size() < prefix.size() + suffix.size() ||
      worker_address.compare(worker_address.size() - suffix.size(), suffix.size(), suffix) != 0)
    return {};
  return worker_address.substr(prefix.size(), worker_address.size() - prefix.size() - suffix.size()) + ".tasks";
}

}  // namespace gantry::internal
