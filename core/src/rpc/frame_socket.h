#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace gantry::internal {

/// Length-prefixed frames on a stream socket: a 4-byte little-endian length, then that
/// many bytes. Used for the same-node task stream, where it is much cheaper per message
/// than an HTTP/2 stream.
class FrameSocket {
 public:
  static constexpr uint32_t kMaxFrame = 1u << 30;

  explicit FrameSocket(int fd) : fd_(fd) {}
  ~FrameSocket();
  FrameSocket(const FrameSocket&) = delete;
  FrameSocket& operator=(const FrameSocket&) = delete;

  /// Connects to a Unix socket; returns null and sets `error` on failure.
  static std::unique_ptr<FrameSocket> connect_unix(const std::string& path, std::string* error);

  /// Writes one frame. Thread-safe against a concurrent `read`, not another `write`.
  bool write(const std::string& payload);
  /// Reads one frame into `out`; false on end of stream, error or a frame over kMaxFrame.
  bool read(std::string* out);
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
  int fd_;
  std::string error_;
  bool reached_end_ = false;
  std::vector<char> buffer_;  // bytes read but not yet returned
  size_t start_ = 0, end_ = 0;
};

/// Listens on a Unix socket path and returns accepted connections. Close with `shutdown`.
class FrameListener {
 public:
  /// Binds and listens; throws gantry::Error naming the path on failure.
  explicit FrameListener(const std::string& path);
  ~FrameListener();
  /// Blocks for the next connection; null after `shutdown`.
  std::unique_ptr<FrameSocket> accept();
  void shutdown();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

/// The framed task socket a worker serves beside its gRPC address ("unix:/d/w-X.sock"
/// serves "/d/w-X.tasks"), or empty when the address is not a Unix socket.
std::string task_socket_path(const std::string& worker_address);

}  // namespace gantry::internal
