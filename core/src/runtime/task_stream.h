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

namespace gantry::internal {

/// One long-lived PushTasks stream from a caller to a worker. Specs queued with `send`
/// are written in batches by a writer thread (whatever queued while the previous write
/// was in flight goes in the next batch); results are read by a reader thread and handed
/// to `on_results`. Thread-safe.
///
/// Handlers run on the reader thread. Never destroy a stream from its own handler: the
/// destructor joins the reader.
class TaskStream {
 public:
  using ResultHandler = std::function<void(proto::ResultBatch&)>;
  /// Called once if the stream ends without `close()` (the worker died or went away).
  using BrokenHandler = std::function<void(const std::string& why)>;

  TaskStream(const std::shared_ptr<grpc::Channel>& channel, ResultHandler on_results, BrokenHandler on_broken);
  ~TaskStream();
  TaskStream(const TaskStream&) = delete;
  TaskStream& operator=(const TaskStream&) = delete;

  void send(proto::TaskSpec spec);
  /// Finishes writing; the worker completes what it has and the stream ends quietly.
  void close();
  /// Ends the stream at once (shutdown).
  void cancel();

 private:
  void write_loop();
  void read_loop();

  grpc::ClientContext ctx_;
  std::unique_ptr<proto::WorkerService::Stub> stub_;
  std::unique_ptr<grpc::ClientReaderWriter<proto::TaskBatch, proto::ResultBatch>> stream_;
  ResultHandler on_results_;
  BrokenHandler on_broken_;

  std::mutex mu_;  // guards queue_ and closing_
  std::condition_variable cv_;
  std::vector<proto::TaskSpec> queue_;
  bool closing_ = false;
  std::atomic<bool> cancelled_{false};
  std::thread writer_;
  std::thread reader_;
};

}  // namespace gantry::internal
