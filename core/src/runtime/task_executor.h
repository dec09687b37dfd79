#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "gantry/ids.h"
#include "gantry/worker.grpc.pb.h"
#include "rpc/frame_socket.h"

namespace gantry::internal {

class CoreWorker;

/// What a running task or actor call can learn about itself (thread-local).
struct CurrentTask {
  const proto::TaskSpec* spec = nullptr;
};
/// The task running on this thread, or null.
const proto::TaskSpec* current_task();

/// Executes tasks and actor calls in a worker: one at a time, in arrival order per
/// stream. Results go back in batches, flushed when the queue runs dry, when 64 are
/// waiting, or 1 ms after the first.
class TaskExecutor {
 public:
  explicit TaskExecutor(CoreWorker& core) : core_(core) {}

  /// Serves one gRPC PushTasks stream until the caller ends it.
  grpc::Status push_tasks(grpc::ServerContext* ctx,
                          grpc::ServerReaderWriter<proto::ResultBatch, proto::TaskBatch>* stream);
  /// Serves one framed task socket until the caller ends it.
  void serve_socket(std::unique_ptr<FrameSocket> socket);
  void create_actor(const proto::CreateActorRequest& req, proto::CreateActorReply* reply);
  /// True while a task or method runs in this process.
  bool busy() const;
  const ActorId& actor_id() const { return actor_id_; }
  /// Resources the hosted actor holds (empty when there is none).
  const proto::Resources& actor_resources() const { return actor_resources_; }

 private:
  /// One task stream's reads, writes and cancellation, whatever carries it.
  struct BatchIo {
    std::function<bool(proto::TaskBatch*)> read;
    std::function<bool(const proto::ResultBatch&)> write;
    std::function<void()> cancel;
  };
  void serve(const BatchIo& io);
  // Runs `spec` and appends its result to `pending`; true when the batch is due to be sent
  // (full, or its first result waited long enough).
  bool run_into(const proto::TaskSpec& spec, proto::ResultBatch* pending,
                std::chrono::steady_clock::time_point* first_pending);
  void execute(const proto::TaskSpec& spec, proto::TaskResult* result);
  proto::ErrorInfo current_exception_error(const std::string& function) const;

  CoreWorker& core_;
  mutable std::mutex exec_mu_;  // held while user code runs: one call at a time
  std::shared_ptr<void> actor_;
  std::string actor_class_;
  ActorId actor_id_;
  proto::Resources actor_resources_;
  std::atomic<int> running_{0};
};

}  // namespace gantry::internal
