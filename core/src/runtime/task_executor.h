#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>
#include <unordered_map>
#include <vector>

#include "gantry/ids.h"
#include "gantry/worker.grpc.pb.h"
#include "rpc/frame_socket.h"
#include "runtime/task_event_log.h"

namespace gantry::internal {

class CoreWorker;

/// What a running task or actor call can learn about itself (thread-local).
struct CurrentTask {
  const proto::TaskSpec* spec = nullptr;
};
/// The task running on this thread, or null.
const proto::TaskSpec* current_task();
/// True on the thread running a task once the task's owner cancelled it (CancelTask).
bool current_task_cancelled();

/// Executes tasks and actor calls in a worker. Results go back in batches, flushed when
/// the queue runs dry, when 64 are waiting, or 1 ms after the first.
///
/// By default one at a time, in arrival order per stream: each stream's thread runs its
/// calls itself under `exec_mu_`. An actor created with max_concurrency N > 1 instead runs
/// its calls on a pool of up to N threads (CallPool): a stream's reader thread hands each
/// call to the pool in arrival order, and the stream's thread sends results back as calls
/// finish, so they may return out of order (callers match them by task id).
class TaskExecutor {
 public:
  explicit TaskExecutor(CoreWorker& core);
  ~TaskExecutor();

  /// Serves one gRPC PushTasks stream until the caller ends it.
  grpc::Status push_tasks(grpc::ServerContext* ctx,
                          grpc::ServerReaderWriter<proto::ResultBatch, proto::TaskBatch>* stream);
  /// Serves one framed task socket until the caller ends it.
  void serve_socket(std::unique_ptr<FrameSocket> socket);
  void create_actor(const proto::CreateActorRequest& req, proto::CreateActorReply* reply);
  /// Cancels task `id` sent to this worker: a running one sees is_cancelled(); one not
  /// started yet, or not even arrived yet (remembered for a minute), is answered with a
  /// TASK_CANCELLED error instead of running. Thread-safe.
  void cancel(const TaskId& id);
  /// Of `ids`, those this worker will never run, now marked to be skipped (answered as
  /// stolen) should they come up: any not running and not among the recently finished.
  /// Thread-safe.
  std::vector<TaskId> steal(const std::vector<TaskId>& ids);
  /// True while a task or method runs in this process.
  bool busy() const;
  const ActorId& actor_id() const { return actor_id_; }
  /// What ran here (counts, executions, failures), for GetTaskEvents. Thread-safe.
  void describe_events(const proto::TaskEventsRequest& req, proto::TaskEvents* out) const;
  /// Resources the hosted actor holds (empty when there is none).
  const proto::Resources& actor_resources() const { return actor_resources_; }

 private:
  /// One task stream's reads, writes and cancellation, whatever carries it.
  struct BatchIo {
    std::function<bool(proto::TaskBatch*)> read;
    std::function<bool(const proto::ResultBatch&)> write;
    std::function<void()> cancel;
  };
  class CallPool;
  void serve(const BatchIo& io);
  // Serves a stream of an actor with max_concurrency > 1: calls run on `pool`.
  void serve_concurrent(const BatchIo& io, CallPool& pool);
  // Runs `spec` and appends its result to `pending`; true when the batch is due to be sent
  // (full, or its first result waited long enough).
  bool run_into(const proto::TaskSpec& spec, proto::ResultBatch* pending,
                std::chrono::steady_clock::time_point* first_pending);
  // Runs `spec` into `result`, or answers TASK_CANCELLED when it was cancelled before it
  // started. `relabel`: name the output lines after it (not while calls overlap).
  void run(const proto::TaskSpec& spec, proto::TaskResult* result, bool relabel);
  void execute(const proto::TaskSpec& spec, proto::TaskResult* result, const std::atomic<bool>* cancelled,
               bool relabel);
  // Registers a task about to run with its cancellation flag, unless it was cancelled or
  // stolen before it started.
  enum class Start { kRun, kCancelled, kStolen };
  Start begin_task(const TaskId& id, std::atomic<bool>* cancelled);
  static constexpr size_t kFinishedKept = 4096;
  void end_task(const TaskId& id);
  proto::ErrorInfo current_exception_error(const std::string& function) const;

  CoreWorker& core_;
  TaskEventLog events_;
  mutable std::mutex exec_mu_;  // held while user code runs inline: one call at a time
  std::shared_ptr<void> actor_;
  std::string actor_class_;
  ActorId actor_id_;
  proto::Resources actor_resources_;
  std::atomic<bool> actor_known_{false};  // actor_id_ and actor_class_ are set (written once)
  std::atomic<int> running_{0};
  // The actor's call pool (max_concurrency > 1): set by create_actor before the actor is
  // reported alive, so before any caller's stream to it starts; kept for the process's life.
  std::unique_ptr<CallPool> pool_owner_;
  std::atomic<CallPool*> pool_{nullptr};

  struct RunningTask {
    TaskId id;
    std::atomic<bool>* cancelled;  // not owned: lives on the running thread's stack
  };
  std::mutex cancel_mu_;  // guards running_tasks_, cancelled_early_, stolen_, finished_
  std::vector<RunningTask> running_tasks_;
  // Given back to their caller (steal) before they started: skipped when they come up.
  std::unordered_map<TaskId, std::chrono::steady_clock::time_point> stolen_;
  // The last kFinishedKept tasks that ran here (a ring and its index), so a steal never
  // takes back one whose result is still on its way.
  std::vector<TaskId> finished_ring_;
  size_t finished_next_ = 0;
  std::unordered_set<TaskId> finished_;
  // Cancelled before they started here, with when; pruned after a minute.
  std::unordered_map<TaskId, std::chrono::steady_clock::time_point> cancelled_early_;
};

}  // namespace gantry::internal
