#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "gantry/agent.grpc.pb.h"
#include "gantry/ids.h"
#include "rpc/grpc_util.h"
#include "runtime/memory_store.h"
#include "runtime/reference_counter.h"
#include "runtime/task_stream.h"
#include "scheduler/resource_set.h"

namespace gantry::internal {

/// How a finished task's value reaches its owner's tables.
using CompleteCallback = std::function<void(const ObjectId& id, ValuePtr value)>;
/// A value that came back for a task whose ref already holds TaskCancelledError: frees
/// what it holds (a shared-memory result, refs pinned for it).
using DiscardCallback = std::function<void(const ObjectId& id, ValuePtr value)>;

/// What `cancel` found.
enum class CancelOutcome {
  kNotFound,      ///< not a task of this submitter, or it finished
  kCancelled,     ///< its ref now holds TaskCancelledError (or already did)
  kForceRefused,  ///< force on an actor call, which would kill the actor; nothing changed
};

/// A finished task whose large result could be rebuilt by running it again (all its
/// arguments are inline): its spec and how it was scheduled.
using LineageCallback = std::function<void(const proto::TaskSpec& spec, const ResourceSet& resources,
                                           const proto::SchedulingStrategy& strategy, int retries)>;

struct SubmitterConfig {
  std::string self_address;
  std::string job_id;  // binary; named in every lease request
  std::shared_ptr<proto::NodeAgent::Stub> agent;
  ChannelCache* channels = nullptr;  // not owned
  MemoryStore* store = nullptr;      // not owned
  ReferenceCounter* refs = nullptr;  // not owned
  CompleteCallback complete;
  DiscardCallback discard;
  LineageCallback keep_lineage;  // called under the submitter's lock, before `complete`
  size_t inline_threshold = 100 * 1024;
  std::chrono::milliseconds lease_linger{100};
  bool force_grpc_streams = false;
};

/// Submits normal tasks: waits for their owned arguments, leases workers from the node
/// agent per resource shape, streams specs to leased workers and takes results back.
///
/// Leases are kept while work of their shape is queued and returned after `lease_linger`
/// idle. Each worker gets several tasks in flight when tasks are short (measured from the
/// results), one at a time when they are long, so long tasks spread over all workers.
/// State lives behind `mu_`; streams and agent calls are never made with callbacks that
/// re-enter while it is held.
class TaskSubmitter {
 public:
  explicit TaskSubmitter(SubmitterConfig config);
  ~TaskSubmitter();

  /// Queues a task. `spec.args` hold inline values or refs; `arg_refs` are the refs among
  /// them, already counted by the caller's ObjectRefs, and pinned here until the task ends.
  void submit(proto::TaskSpec spec, std::vector<ObjectId> arg_refs, ResourceSet resources,
              proto::SchedulingStrategy strategy, int max_retries, bool retry_exceptions);
  /// Cancels task `id` (gantry::cancel): one not sent to a worker yet fails at once and
  /// never runs. One sent to a worker fails at once too; with `force` its worker is killed
  /// (the other tasks sent there are queued again without spending a retry), else
  /// `notify_worker` gets the worker's address to send CancelTask to, and whatever the
  /// task returns later is dropped.
  CancelOutcome cancel(const TaskId& id, bool force, std::string* notify_worker);
  /// Cancels streams and lease requests; tasks still queued are dropped. Idempotent.
  void stop();
  size_t num_tasks() const;
  /// Its tasks not finished yet (at most `limit`; sets `truncated` beyond) and, per
  /// function, how many finished and failed.
  void describe(size_t limit, proto::OwnedState* out) const;

  /// A finished task: its value, and the argument pins to release.
  struct Completion {
    ObjectId id;
    ValuePtr value;
    std::vector<ObjectId> arg_refs;
  };

 private:
  struct Task {
    proto::TaskSpec spec;
    std::vector<ObjectId> arg_refs;
    std::string key;
    int retries_left = 0;
    bool retry_exceptions = false;
    int unresolved = 0;
    bool cancelled = false;  // its ref holds TaskCancelledError; still in flight on a worker
  };
  struct LeasedWorker {
    uint64_t lease_id = 0;  // the granting agent's
    proto::NodeAgent::Stub* agent = nullptr;  // which granted it (spillback: another node's); in agents_
    std::string address;
    int pid = 0;
    std::shared_ptr<TaskStream> stream;
    std::unordered_set<TaskId> in_flight;
    std::chrono::steady_clock::time_point idle_since;
    // When it last showed progress (a result came, or work reached it idle); tasks queued
    // behind one that runs much longer than that are stolen back (steal_locked).
    std::chrono::steady_clock::time_point progress_at;
    bool stealing = false;  // a StealTasks call is out
    bool stalled = false;   // gets no more queued work until a result comes back
  };
  struct KeyState {
    std::string key;
    ResourceSet resources;
    std::string description;
    proto::SchedulingStrategy strategy;
    std::deque<TaskId> queue;
    // By a handle of ours: lease ids of different agents may coincide.
    std::unordered_map<uint64_t, std::unique_ptr<LeasedWorker>> workers;
    int pending_lease_requests = 0;
    std::string refusal;  // why the last node we were sent to refused this job, if one did
    // Per function, since one shape serves many: the moving average of execution time
    // (a cheap task must not make long ones of the same shape queue up behind each
    // other on one worker; < 0 unknown), and how many finished and failed (describe()).
    struct FunctionStats {
      double avg_us = -1;
      int64_t finished = 0;
      int64_t failed = 0;
    };
    std::unordered_map<std::string, FunctionStats> functions;
  };
  /// Work collected under mu_ and done after it is released: completions (which run
  /// store callbacks) and RPCs (whose callbacks may run inline).
  struct AfterUnlock {
    std::vector<Completion> done;
    std::vector<Completion> discarded;  // cancelled tasks that ended: value (may be null) and pins to drop
    std::vector<std::function<void()>> calls;
    std::vector<std::shared_ptr<TaskStream>> flush;  // streams given specs, written after unlock
  };
  struct LeaseCall;
  struct StealCall {
    grpc::ClientContext ctx;
    proto::StealTasksRequest request;
    proto::StealTasksReply reply;
    std::unique_ptr<proto::WorkerService::Stub> stub;
  };

  // All *_locked methods need mu_ held.
  void dispatch_locked(KeyState& ks, AfterUnlock& after);
  // Tasks of `function` a worker of `ks` may have in flight (1 while its time is unknown).
  size_t pipeline_depth_locked(const KeyState& ks, const std::string& function) const;
  bool resolve_args_locked(Task& task, AfterUnlock& after);
  // Asks this node's agent for a lease, or with `spilled_to` (a node id, binary) the
  // agent `agent` of the node this node's agent sent us to. `unreachable`: a node that
  // did not answer such a request, which this node's agent must not pick again.
  void request_lease_locked(KeyState& ks, AfterUnlock& after, proto::NodeAgent::Stub* agent = nullptr,
                            const std::string& spilled_to = {}, const std::string& unreachable = {});
  // The stub for another node's agent, kept until this submitter is destroyed: callbacks
  // hold plain pointers, so no channel is ever released on a gRPC callback thread.
  proto::NodeAgent::Stub* agent_at_locked(const std::string& address);
  void fail_task_locked(const TaskId& id, proto::ErrorInfo error, AfterUnlock& after);
  void fail_queue_locked(KeyState& ks, const proto::ErrorInfo& error, AfterUnlock& after);
  void drop_worker_locked(KeyState& ks, uint64_t handle, bool failed, AfterUnlock& after);
  // `ids` in submission order (unknown ones first).
  std::vector<TaskId> in_submission_order_locked(const std::unordered_set<TaskId>& ids) const;
  // A cancelled task ended (its result came, or its worker died): drops it.
  void discard_task_locked(std::unordered_map<TaskId, std::unique_ptr<Task>>::iterator it, ValuePtr value,
                           AfterUnlock& after);

  void on_dependency_ready(const TaskId& id);
  // Work stealing: asks a worker whose running task outlasts what its function usually
  // takes for the tasks queued behind it, and queues those it gives back again (on other
  // workers, or new leases). Ranks of a group that wait for each other would otherwise
  // wait behind each other for ever.
  void steal_locked(KeyState& ks, uint64_t handle, LeasedWorker& w, AfterUnlock& after);
  void on_stolen(const std::string& key, uint64_t handle, const grpc::Status& status,
                 const proto::StealTasksReply& reply);
  void on_lease(const std::string& key, proto::NodeAgent::Stub* agent,
                const std::string& spilled_to, const grpc::Status& status, const proto::LeaseReply& reply);
  void on_results(const std::string& key, uint64_t handle, proto::ResultBatch& batch);
  void on_broken(const std::string& key, uint64_t handle, const std::string& why);
  void finish(AfterUnlock& after);
  void return_lease(proto::NodeAgent::Stub* agent, uint64_t lease_id, bool failed);
  void housekeeping_loop();

  SubmitterConfig config_;
  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::unordered_map<TaskId, std::unique_ptr<Task>> tasks_;
  std::map<std::string, KeyState> keys_;
  std::vector<std::shared_ptr<TaskStream>> retired_streams_;  // destroyed off the lock
  std::unordered_map<LeaseCall*, std::shared_ptr<LeaseCall>> lease_calls_;
  uint64_t next_sequence_ = 0;  // submission order, for re-running lost tasks in order
  uint64_t next_handle_ = 1;    // keys of KeyState::workers
  std::unordered_map<std::string, std::shared_ptr<proto::NodeAgent::Stub>> agents_;  // by address
  int calls_in_flight_ = 0;  // lease requests and returns whose callbacks hold `this`
  bool stopping_ = false;
  std::thread housekeeper_;
};

}  // namespace gantry::internal
