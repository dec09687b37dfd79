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

/// How batches travel on one task stream: a framed socket (Unix or TCP), or a gRPC
/// PushTasks stream.
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

/// The transport to a worker: its framed task endpoint (`task_address`, a Unix socket on
/// one node or a TCP port between nodes) when it has one, else its gRPC PushTasks stream.
/// `force_grpc` (GANTRY_TASK_TRANSPORT=grpc) always uses the gRPC stream.
std::unique_ptr<StreamTransport> connect_task_transport(ChannelCache& channels, const std::string& worker_address,
                                                        const std::string& task_address, bool force_grpc);


/// One long-lived task stream from a caller to a worker. Results are read by a reader
/// thread and handed to `on_results`. Thread-safe.
///
/// Writing is split so that callers never write while holding their own locks (a write
/// blocks while the worker's socket buffer is full): `enqueue` under the lock fixes the
/// order, `flush` after it writes. The thread that finds no write in progress writes;
/// specs queued meanwhile go out together in its next batch, so there is no writer thread
/// on the latency path.
///
/// Handlers run on the reader thread. A stream may be destroyed anywhere, even by its own
/// handler: the reader thread shares the stream's state and is detached in that case.
class TaskStream {
 public:
  using ResultHandler = std::function<void(proto::ResultBatch&)>;
  /// Called once if the stream ends without `close()` (the worker died or went away).
  using BrokenHandler = std::function<void(const std::string& why)>;

  TaskStream(std::unique_ptr<StreamTransport> transport, ResultHandler on_results, BrokenHandler on_broken);
  ~TaskStream();
  TaskStream(const TaskStream&) = delete;
  TaskStream& operator=(const TaskStream&) = delete;

  /// Queues a spec without writing; cheap, never blocks on the socket. Specs keep the
  /// order of their `enqueue` calls.
  void enqueue(proto::TaskSpec spec);
  /// Writes what is queued, unless another thread is writing (it takes them). May block
  /// while the worker's buffer is full: call with no lock held that a reader needs.
  void flush();
  /// `enqueue` then `flush`.
  void send(proto::TaskSpec spec);
  /// Finishes writing; the worker completes what it has and the stream ends quietly.
  void close();
  /// Ends the stream at once (shutdown).
  void cancel();

 private:
  struct State;
  static void read_loop(const std::shared_ptr<State>& state);

  std::shared_ptr<State> state_;  // shared with the reader thread
  std::thread reader_;
};

}  // namespace gantry::internal
