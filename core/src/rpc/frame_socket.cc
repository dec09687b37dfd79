#include "rpc/frame_socket.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
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

// A TCP task stream carries small frames both ways: send them at once. Keepalive probes
// end a stream whose peer machine vanished within about 20 s even while it is idle.
void tune_tcp(int fd) {
  int one = 1, idle = 10, interval = 3, count = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
}

}  // namespace

bool numeric_address(const std::string& host, int port, sockaddr_storage* out, socklen_t* len, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0 || found == nullptr) {
    *error = "'" + host + "' is not a numeric IP address (" + ::gai_strerror(rc) + ")";
    return false;
  }
  std::memcpy(out, found->ai_addr, found->ai_addrlen);
  *len = found->ai_addrlen;
  ::freeaddrinfo(found);
  return true;
}

std::string bound_address(int fd, const std::string& host) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return {};
  int port = addr.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                                        : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool split_host_port(const std::string& address, std::string* host, int* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= address.size()) return false;
  std::string h = address.substr(0, colon), p = address.substr(colon + 1);
  if (p.find_first_not_of("0123456789") != std::string::npos || p.size() > 5) return false;
  if (h.front() == '[') {
    if (h.back() != ']') return false;
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != std::string::npos) {
    return false;  // an IPv6 host needs brackets
  }
  int n = std::stoi(p);
  if (h.empty() || n > 65535) return false;
  *host = h;
  *port = n;
  return true;
}

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

std::unique_ptr<FrameSocket> FrameSocket::connect(const std::string& endpoint, std::string* error) {
  if (endpoint.rfind("unix:", 0) == 0) return connect_unix(endpoint.substr(5), error);
  std::string host;
  int port = 0;
  if (endpoint.rfind("tcp:", 0) != 0 || !split_host_port(endpoint.substr(4), &host, &port)) {
    *error = "not a task endpoint: '" + endpoint + "' (expected unix:/path or tcp:host:port)";
    return nullptr;
  }
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (!numeric_address(host, port, &addr, &len, error)) return nullptr;
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::strerror(errno);
    return nullptr;
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    *error = "cannot connect to " + endpoint + ": " + std::strerror(errno);
    ::close(fd);
    return nullptr;
  }
  tune_tcp(fd);
  return std::make_unique<FrameSocket>(fd);
}

void FrameSocket::set_read_timeout(std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

bool FrameSocket::write(const std::string& payload) { return send_frame(payload, nullptr); }

bool FrameSocket::write_reading(const std::string& payload, const FrameHandler& on_frame) {
  return send_frame(payload, &on_frame);
}

bool FrameSocket::send_frame(const std::string& payload, const FrameHandler* on_frame) {
  if (payload.size() > kMaxFrame) {
    error_ = "frame of " + std::to_string(payload.size()) + " bytes is too large";
    return false;
  }
  uint32_t n = static_cast<uint32_t>(payload.size());
  iovec iov[2] = {{&n, sizeof n}, {const_cast<char*>(payload.data()), payload.size()}};
  size_t total = sizeof n + payload.size();
  size_t done = 0;
  int idx = 0;
  bool peer_writing = on_frame != nullptr && !reached_end_;
  while (done < total) {
    msghdr msg{};
    msg.msg_iov = iov + idx;
    msg.msg_iovlen = 2 - idx;
    ssize_t w = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | (peer_writing ? MSG_DONTWAIT : 0));
    if (w < 0) {
      if (errno == EINTR) continue;
      if ((errno == EAGAIN || errno == EWOULDBLOCK) && peer_writing) {
        // Full: wait until we can write more or the peer has sent something to take.
        pollfd p{fd_, POLLIN | POLLOUT, 0};
        if (::poll(&p, 1, -1) < 0 && errno != EINTR) {
          error_ = std::strerror(errno);
          return false;
        }
        if ((p.revents & POLLIN) == 0) continue;
        Received got = receive(false);
        if (got == Received::kNothing) continue;
        if (got == Received::kEnd) {
          peer_writing = false;  // the peer finished sending (or failed): plain writes now
          continue;
        }
        std::string frame;
        for (Take t = take_buffered(&frame); t != Take::kNone; t = take_buffered(&frame)) {
          if (t == Take::kBad || !(*on_frame)(frame)) return false;
        }
        continue;
      }
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

FrameSocket::Take FrameSocket::take_buffered(std::string* out, uint32_t max_frame) {
  size_t available = end_ - start_;
  if (available < 4) return Take::kNone;
  uint32_t n;
  std::memcpy(&n, buffer_.data() + start_, 4);
  if (n > max_frame) {
    error_ = "frame length " + std::to_string(n) + " is over the limit";
    return Take::kBad;
  }
  if (available < 4 + static_cast<size_t>(n)) return Take::kNone;
  out->assign(buffer_.data() + start_ + 4, n);
  start_ += 4 + n;
  if (start_ == end_) start_ = end_ = 0;
  return Take::kFrame;
}

FrameSocket::Received FrameSocket::receive(bool wait) {
  if (reached_end_) return Received::kEnd;
  // Room for at least the rest of the frame being read, or 64 KiB. (Whole frames may
  // already be buffered: `write_reading` receives while earlier ones wait to be taken.)
  size_t available = end_ - start_;
  size_t need = 65536;
  if (available >= 4) {
    uint32_t n;
    std::memcpy(&n, buffer_.data() + start_, 4);
    size_t frame = 4 + static_cast<size_t>(std::min(n, kMaxFrame));
    if (frame > available) need = std::max(need, frame - available);
  }
  if (start_ > 0 && buffer_.size() - end_ < need) {
    std::memmove(buffer_.data(), buffer_.data() + start_, available);
    end_ -= start_;
    start_ = 0;
  }
  if (buffer_.size() - end_ < need) buffer_.resize(std::max(buffer_.size() * 2, end_ + need));
  while (true) {
    ssize_t r = ::recv(fd_, buffer_.data() + end_, buffer_.size() - end_, wait ? 0 : MSG_DONTWAIT);
    if (r > 0) {
      end_ += static_cast<size_t>(r);
      return Received::kBytes;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && !wait && (errno == EAGAIN || errno == EWOULDBLOCK)) return Received::kNothing;
    reached_end_ = r == 0;
    error_ = reached_end_ ? "end of stream" : std::strerror(errno);
    return Received::kEnd;
  }
}

bool FrameSocket::read(std::string* out, uint32_t max_frame) {
  while (true) {
    switch (take_buffered(out, max_frame)) {
      case Take::kFrame: return true;
      case Take::kBad: return false;
      case Take::kNone: break;
    }
    if (receive(true) != Received::kBytes) return false;
  }
}

void FrameSocket::shutdown_write() { ::shutdown(fd_, SHUT_WR); }

void FrameSocket::shutdown_both() { ::shutdown(fd_, SHUT_RDWR); }

FrameListener::FrameListener(const std::string& path) : path_(path), endpoint_("unix:" + path) {
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

std::unique_ptr<FrameListener> FrameListener::tcp(const std::string& host) {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string error;
  if (!numeric_address(host, 0, &addr, &len, &error)) throw Error("cannot listen for task streams: " + error);
  std::unique_ptr<FrameListener> listener(new FrameListener());
  listener->fd_ = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener->fd_ < 0) throw Error("cannot create a socket: " + std::string(std::strerror(errno)));
  std::string bound;
  if (::bind(listener->fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(listener->fd_, 128) != 0 ||
      (bound = bound_address(listener->fd_, host)).empty())
    throw Error("cannot listen for task streams on " + host + ": " + std::strerror(errno));
  listener->endpoint_ = "tcp:" + bound;
  return listener;
}

FrameListener::~FrameListener() {
  shutdown();
  if (fd_ >= 0) ::close(fd_);
  if (!path_.empty()) ::unlink(path_.c_str());
}

std::unique_ptr<FrameSocket> FrameListener::accept() {
  while (true) {
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      if (path_.empty()) tune_tcp(fd);
      return std::make_unique<FrameSocket>(fd);
    }
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
