#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gantry/head.grpc.pb.h"
#include "gantry/ids.h"
#include "runtime/memory_store.h"
#include "runtime/reference_counter.h"
#include "runtime/task_stream.h"
#include "runtime/task_submitter.h"

namespace gantry::internal {

struct ActorSubmitterConfig {
  std::string self_address;
  std::shared_ptr<proto::Head::Stub> head;
  ChannelCache* channels = nullptr;  // not owned
  MemoryStore* store = nullptr;      // not owned
  ReferenceCounter* refs = nullptr;  // not owned
  CompleteCallback complete;
  DiscardCallback discard;
  size_t inline_threshold = 100 * 1024;
  bool force_grpc_streams = false;
};

/// Sends method calls to actors: one ordered stream per (this caller, actor). Finds the
/// actor's address through the head, and again after its process dies (it may restart).
/// Calls in flight when it dies are re-sent up to `max_task_retries`, else fail with
/// ActorDiedError. State lives behind `mu_`.
class ActorSubmitter {
 public:
  explicit ActorSubmitter(ActorSubmitterConfig config);
  ~ActorSubmitter();

  /// Sets the retry policy for calls to an actor this process created.
  void set_max_task_retries(const ActorId& actor, int max_task_retries);
  void submit(const ActorId& actor, proto::TaskSpec spec, std::vector<ObjectId> arg_refs);
  /// Cancels call `id` (gantry::cancel): one not sent yet fails at once and is never
  /// sent; one sent fails at once, `notify_worker` gets the actor's address to send
  /// CancelTask to, and what the call returns later is dropped. `force` is refused
  /// (kForceRefused) for a call not finished: it would kill the actor.
  CancelOutcome cancel(const TaskId& id, bool force, std::string* notify_worker);
  void stop();
  /// Calls not answered yet (at most `limit` in `out`) and, per method, how many
  /// finished and failed; see TaskSubmitter::describe.
  void describe(size_t limit, proto::OwnedState* out) const;

 private:
  struct Call {
    proto::TaskSpec spec;
    std::vector<ObjectId> arg_refs;
    int retries_left = 0;
    bool cancelled = false;  // its ref holds TaskCancelledError; still in flight
  };
  struct ActorState {
    ActorId id;
    std::deque<Call> queue;                       // not sent yet, in order
    std::map<uint64_t, Call> in_flight;           // by sequence number
    std::unordered_map<TaskId, uint64_t> seq_of;  // task id -> sequence
    std::string address;
    std::string last_address;
    std::shared_ptr<TaskStream> stream;
    uint64_t generation = 0;
    bool resolving = false;
    bool dead = false;
    proto::ErrorInfo death;
    int max_task_retries = 0;
    uint64_t next_sequence = 0;
    std::map<std::string, std::pair<int64_t, int64_t>> counts;  // method -> finished, failed
  };
  struct AfterUnlock {
    std::vector<TaskSubmitter::Completion> done;
    std::vector<TaskSubmitter::Completion> discarded;  // cancelled calls that ended
    std::vector<std::function<void()>> calls;
    std::vector<std::shared_ptr<TaskStream>> flush;  // streams given specs, written after unlock
  };
  struct ResolveCall;

  void flush_locked(ActorState& st, AfterUnlock& after);
  void resolve_locked(ActorState& st, AfterUnlock& after);
  void fail_call(Call& call, const proto::ErrorInfo& error, AfterUnlock& after);
  // A cancelled call ended (its result came, or the actor died): drops it.
  void discard_call(Call& call, ValuePtr value, AfterUnlock& after);
  void on_resolved(const ActorId& id, const grpc::Status& status, const proto::GetActorReply& reply);
  void on_results(const ActorId& id, uint64_t generation, proto::ResultBatch& batch);
  void on_broken(const ActorId& id, uint64_t generation, const std::string& why);
  void finish(AfterUnlock& after);

  ActorSubmitterConfig config_;
  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::unordered_map<ActorId, ActorState> actors_;
  std::vector<std::shared_ptr<TaskStream>> retired_;
  std::unordered_map<ResolveCall*, std::shared_ptr<ResolveCall>> resolve_calls_;
  bool stopping_ = false;
};

}  // namespace gantry::internal
