#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gantry/worker.grpc.pb.h"
#include "rpc/frame_socket.h"

namespace gantry::internal {

class ChannelCache;

/// How batches travel on one task stream: a framed Unix socket to a same-node worker,
/// or a gRPC PushTasks stream.
class StreamTransport {
 public:
  virtual ~StreamTransport() = default;
  virtual bool write(const proto::TaskBatch& batch) = 0;
  virtual bool read(proto::ResultBatch* batch) = 0;
  virtual void writes_done() = 0;
  /// After `read` returned false: true when the stream ended cleanly; else `error` says why.
  virtual bool finish(std::string* error) = 0;
  virtual void cancel() = 0;
};

/// The transport to a worker: its framed task socket when it is on this node (the path
/// given by `task_socket_path`), else its gRPC PushTasks stream.
/// `force_grpc` (GANTRY_TASK_TRANSPORT=grpc) uses the gRPC stream even on the same node.
std::unique_ptr<StreamTransport> connect_task_transport(ChannelCache& channels, const std::string& worker_address,
                                                        bool force_grpc);


/// One long-lived task stream from a caller to a worker. `send` writes on the calling
/// thread when no write is in progress; specs sent while one is go out together in the
/// next batch, written by that same thread. Results are read by a reader thread and
/// handed to `on_results`. Thread-safe.
///
/// Handlers run on the reader thread. Never destroy a stream from its own handler: the
/// destructor joins the reader.
class TaskStream {
 public:
  using ResultHandler = std::function<void(proto::ResultBatch&)>;
  /// Called once if the stream ends without `close()` (the worker died or went away).
  using BrokenHandler = std::function<void(const std::string& why)>;

  TaskStream(std::unique_ptr<StreamTransport> transport, ResultHandler on_results, BrokenHandler on_broken);
  ~TaskStream();
  TaskStream(const TaskStream&) = delete;
  TaskStream& operator=(const TaskStream&) = delete;

  void send(proto::TaskSpec spec);
  /// Finishes writing; the worker completes what it has and the stream ends quietly.
  void close();
  /// Ends the stream at once (shutdown).
  void cancel();

 private:
  // Needs mu_ held (released around each write). Writes until the queue is empty.
  void write_queued(std::unique_lock<std::mutex>& lock);
  void read_loop();

  std::unique_ptr<StreamTransport> transport_;
  ResultHandler on_results_;
  BrokenHandler on_broken_;

  std::mutex mu_;  // guards the queue and flags below
  std::vector<proto::TaskSpec> queue_;
  proto::TaskBatch batch_;       // used only by the thread that is writing
  bool writing_ = false;         // a thread is writing; others just queue
  bool closing_ = false;
  bool done_writing_ = false;    // writes_done sent
  bool broken_ = false;          // a write failed or the reader saw the end
  std::atomic<bool> cancelled_{false};
  std::thread reader_;
};

}  // namespace gantry::internal
