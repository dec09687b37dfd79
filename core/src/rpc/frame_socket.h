#pragma once

#include <cstddef>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace gantry::internal {

/// Length-prefixed frames on a stream socket: a 4-byte little-endian length, then that
/// many bytes. Used for task streams (a Unix socket on one node, TCP between nodes), where
/// it is much cheaper per message than an HTTP/2 stream.
class FrameSocket {
 public:
  static constexpr uint32_t kMaxFrame = 1u << 30;

  explicit FrameSocket(int fd) : fd_(fd) {}
  ~FrameSocket();
  FrameSocket(const FrameSocket&) = delete;
  FrameSocket& operator=(const FrameSocket&) = delete;

  /// Connects to a Unix socket; returns null and sets `error` on failure.
  static std::unique_ptr<FrameSocket> connect_unix(const std::string& path, std::string* error);
  /// Connects to an endpoint as `FrameListener::endpoint` names it: "unix:/path" or
  /// "tcp:host:port". Returns null and sets `error` on failure.
  static std::unique_ptr<FrameSocket> connect(const std::string& endpoint, std::string* error);

  /// Called with each frame that arrives while `write_reading` waits; false stops the
  /// write (it then fails).
  using FrameHandler = std::function<bool(std::string& frame)>;

  /// Writes one frame. Thread-safe against a concurrent `read`, not another `write`.
  bool write(const std::string& payload);
  /// Writes one frame and, while the peer's buffer is full, reads the frames it sends
  /// meanwhile and hands them to `on_frame`. One thread can then both send and receive
  /// without the two sides each waiting for the other to read. Not with a concurrent `read`.
  bool write_reading(const std::string& payload, const FrameHandler& on_frame);
  /// Reads one frame into `out`; false on end of stream, error or a frame over `max_frame`.
  bool read(std::string* out, uint32_t max_frame = kMaxFrame);
  /// Reads time out after `timeout` (0: never), for a handshake with an unknown peer.
  void set_read_timeout(std::chrono::milliseconds timeout);
  /// No more writes: the peer reads end of stream after what was sent.
  void shutdown_write();
  /// Unblocks a reader and a writer (both directions shut down).
  void shutdown_both();
  int fd() const { return fd_; }
  /// Why the last read or write failed, for logs.
  const std::string& error() const { return error_; }
  /// True when a read failed because the peer closed its end cleanly.
  bool reached_end() const { return reached_end_; }

 private:
  enum class Take { kNone, kFrame, kBad };
  // Moves one whole buffered frame to `out`, if there is one.
  Take take_buffered(std::string* out, uint32_t max_frame = kMaxFrame);
  enum class Received { kBytes, kNothing, kEnd };
  // Appends what the socket has to the buffer, waiting for bytes when `wait` (else
  // kNothing when there were none). kEnd: end of stream or an error (see error()).
  Received receive(bool wait);
  bool send_frame(const std::string& payload, const FrameHandler* on_frame);

  int fd_;
  std::string error_;
  bool reached_end_ = false;
  std::vector<char> buffer_;  // bytes read but not yet returned
  size_t start_ = 0, end_ = 0;
};

/// Listens on a Unix socket path or a TCP port and returns accepted connections. Close
/// with `shutdown`.
class FrameListener {
 public:
  /// Binds and listens on a Unix socket; throws gantry::Error naming the path on failure.
  explicit FrameListener(const std::string& path);
  /// Binds and listens on `host` (an IPv4 or IPv6 literal) and a port the kernel picks;
  /// throws gantry::Error on failure.
  static std::unique_ptr<FrameListener> tcp(const std::string& host);
  ~FrameListener();
  /// Blocks for the next connection; null after `shutdown`.
  std::unique_ptr<FrameSocket> accept();
  void shutdown();
  /// Where callers connect (see FrameSocket::connect): "unix:/path" or "tcp:host:port".
  const std::string& endpoint() const { return endpoint_; }

 private:
  FrameListener() = default;
  std::string path_;  // Unix socket only; unlinked on destruction
  std::string endpoint_;
  int fd_ = -1;
};

/// The framed task socket a worker serves beside its gRPC address ("unix:/d/w-X.sock"
/// serves "/d/w-X.tasks"), or empty when the address is not a Unix socket.
std::string task_socket_path(const std::string& worker_address);

/// Resolves a numeric IP `host` and `port` into `out`; false with `error` set when `host`
/// is not an IP address.
bool numeric_address(const std::string& host, int port, sockaddr_storage* out, socklen_t* len, std::string* error);
/// "host:port" of the port socket `fd` is bound to (IPv6 hosts in brackets); empty on error.
std::string bound_address(int fd, const std::string& host);

/// Splits "host:port" (IPv6 hosts in brackets, "[::1]:80") into its parts; false when it
/// is not of that form.
bool split_host_port(const std::string& address, std::string* host, int* port);

}  // namespace gantry::internal
