#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gantry/agent.grpc.pb.h"
#include "gantry/detail/runtime.h"
#include "gantry/head.grpc.pb.h"
#include "gantry/worker.grpc.pb.h"
#include "object_store/shm_object.h"
#include "rpc/frame_socket.h"
#include "rpc/grpc_util.h"
#include "runtime/actor_submitter.h"
#include "runtime/memory_store.h"
#include "runtime/reference_counter.h"
#include "runtime/task_submitter.h"

namespace gantry::internal {

class TaskExecutor;
class OutputForwarder;

struct CoreWorkerConfig {
  bool is_driver = true;
  UniqueId worker_id;
  UniqueId node_id;
  UniqueId job_id;
  std::string listen_address;  // "unix:/path" this process serves on
  std::string agent_address;
  std::string head_address;
  std::string node_ip = "127.0.0.1";  // the address other nodes reach this node at
  std::vector<int> gpu_ids;
  std::string session_dir;
  bool force_grpc_streams = false;
  std::chrono::microseconds get_spin{50};  // MemoryStore::spin_for's budget
  size_t inline_threshold = 100 * 1024;
  OutputForwarder* output = nullptr;  // workers only; not owned
};

/// The runtime of one driver or worker process: owns the objects it creates (memory
/// store and reference counts), submits tasks and actor calls, and serves WorkerService
/// (GetObject and UpdateBorrowers for its objects; PushTasks and CreateActor to execute).
/// All public methods are thread-safe.
class CoreWorker final : public detail::Runtime, public proto::WorkerService::Service {
 public:
  explicit CoreWorker(CoreWorkerConfig config);
  ~CoreWorker() override;

  /// Starts serving; a worker then registers with its node agent.
  void start();
  /// Stops submitting and serving. Idempotent.
  void stop();

  // detail::Runtime
  void add_local_ref(const ObjectId& id, const std::string& owner) override;
  void remove_local_ref(const ObjectId& id) override;
  ObjectId put_inline(std::string bytes, std::vector<std::shared_ptr<detail::RefState>> nested) override;
  std::unique_ptr<detail::WritableObject> create_object(size_t size) override;
  ObjectId seal_object(std::unique_ptr<detail::WritableObject> object,
                       std::vector<std::shared_ptr<detail::RefState>> nested) override;
  std::shared_ptr<detail::Buffer> get(const ObjectId& id, const std::string& owner,
                                      std::optional<std::chrono::milliseconds> timeout) override;
  std::vector<bool> wait(const std::vector<std::pair<ObjectId, std::string>>& ids, size_t num_returns,
                         std::optional<std::chrono::milliseconds> timeout) override;
  ObjectId submit_task(const std::string& function, std::vector<detail::EncodedArg> args,
                       const TaskOptions& options) override;
  ActorId create_actor(const std::string& factory, const std::string& class_key,
                       std::vector<detail::EncodedArg> args, const ActorOptions& options) override;
  ObjectId submit_actor_task(const ActorId& actor, const std::string& method,
                             std::vector<detail::EncodedArg> args) override;
  std::optional<ActorId> get_named_actor(const std::string& name, const std::string& class_key) override;
  void kill_actor(const ActorId& actor, bool no_restart) override;
  void cancel(const ObjectId& id, const std::string& owner, const CancelOptions& options) override;
  std::vector<NodeInfo> nodes() override;
  std::string create_placement_group(const PlacementGroupOptions& options) override;
  bool wait_placement_group(const std::string& id, std::chrono::milliseconds timeout) override;
  void remove_placement_group(const std::string& id) override;
  std::optional<std::pair<std::string, PlacementGroupOptions>> find_placement_group(const std::string& name) override;
  std::vector<std::string> placement_group_bundle_nodes(const std::string& id) override;
  bool kv_put(const std::string& key, std::string_view value, bool overwrite, bool cluster) override;
  std::optional<std::string> kv_get(const std::string& key, bool cluster) override;
  std::optional<std::string> kv_wait(const std::string& key, std::chrono::milliseconds timeout,
                                     bool cluster) override;
  bool kv_del(const std::string& key, bool cluster) override;
  int64_t kv_add(const std::string& key, int64_t delta, bool cluster) override;
  std::vector<std::string> kv_keys(const std::string& prefix, bool cluster) override;
  std::map<std::string, double> cluster_resources(bool available) override;
  /// Tells the agent this worker waits (get, wait, kv::wait, a collective) so its CPUs can
  /// run other tasks. Nests.
  void set_blocked(bool blocked) override;
  const std::string& address() const override { return config_.listen_address; }
  RuntimeContext context() const override;
  size_t inline_threshold() const override { return config_.inline_threshold; }

  // proto::WorkerService
  grpc::Status PushTasks(grpc::ServerContext* ctx,
                         grpc::ServerReaderWriter<proto::ResultBatch, proto::TaskBatch>* stream) override;
  grpc::Status CreateActor(grpc::ServerContext* ctx, const proto::CreateActorRequest* req,
                           proto::CreateActorReply* reply) override;
  grpc::Status GetObject(grpc::ServerContext* ctx, const proto::GetObjectRequest* req,
                         proto::GetObjectReply* reply) override;
  grpc::Status PrintOutput(grpc::ServerContext* ctx, const proto::OutputText* req, proto::Empty* reply) override;
  grpc::Status ListOwned(grpc::ServerContext* ctx, const proto::ListOwnedRequest* req, proto::OwnedState* reply) override;
  grpc::Status UpdateBorrowers(grpc::ServerContext* ctx, const proto::BorrowUpdate* req,
                               proto::Empty* reply) override;
  grpc::Status StealTasks(grpc::ServerContext* ctx, const proto::StealTasksRequest* req,
                          proto::StealTasksReply* reply) override;
  grpc::Status GetTaskEvents(grpc::ServerContext* ctx, const proto::TaskEventsRequest* req,
                             proto::TaskEvents* reply) override;
  grpc::Status CancelTask(grpc::ServerContext* ctx, const proto::CancelTaskRequest* req, proto::Empty* reply) override;

  // For the executor.
  /// The bytes of one task argument: inline, mapped from shared memory, or fetched.
  std::shared_ptr<detail::Buffer> resolve_arg(const proto::TaskArg& arg);
  /// Creates a shared-memory object for a large value with id `id`.
  std::unique_ptr<detail::WritableObject> create_object_with_id(const ObjectId& id, size_t size);
  /// Done writing a large object made by create_object_with_id (sealed, or published as a
  /// result): unmaps it, or keeps the mapping for a later object of this process that
  /// reuses its file (WarmMappings).
  void release_writable(std::unique_ptr<detail::WritableObject> object);
  /// Where an object made by create_object_with_id lives.
  proto::ShmLocation location_of(const detail::WritableObject& object) const;
  const CoreWorkerConfig& config() const { return config_; }
  OutputForwarder* output() const { return config_.output; }
  /// Executor side of returning ObjectRefs: pins each ref in `nested` at its owner for the
  /// result's owner (so it outlives this worker's own references) and lists them in
  /// `value->contained`. Blocks until every owner has the pin.
  void pin_for_result(const std::vector<std::shared_ptr<detail::RefState>>& nested, const proto::TaskSpec& spec,
                      proto::ObjectValue* value);

  size_t num_owned_objects() const { return store_.size(); }
  size_t num_pending_tasks() const;

 private:
  /// A key-value request in this job's namespace, or the cluster's.
  proto::KvRequest kv_request(const std::string& key, bool cluster) const;
  std::shared_ptr<detail::Buffer> to_buffer(const ValuePtr& value, const ObjectId& id);
  /// Maps a large object, copying it to this node first when it lives on another.
  std::shared_ptr<detail::Buffer> map_shm(const proto::ShmLocation& location);
  ValuePtr fetch_from_owner(const ObjectId& id, const std::string& owner,
                            std::optional<std::chrono::milliseconds> timeout, const std::string& lost_node = {});
  void on_free(const ObjectId& id);
  void on_borrow(const ObjectId& id, const std::string& owner, bool add);
  void complete(const ObjectId& id, ValuePtr value);
  /// Frees what a value that came back for a cancelled task holds (see DiscardCallback).
  void discard(const ObjectId& id, const ValuePtr& value);
  /// Frees a shared-memory object at this node's agent, which passes it on to
  /// `holder_node` (hex) when the object was made there.
  void delete_shm(const ObjectId& id, const std::string& holder_node = {});
  /// Tells the agent this worker waits in get()/wait() so its CPUs can run other tasks.
  /// Nests: with several calls of a concurrent actor waiting, the agent hears of the
  /// first to block and the last to return.
  /// Blocked for its lifetime (no-op in a driver or outside a task).
  class BlockedScope {
   public:
    explicit BlockedScope(CoreWorker& core) : core_(core) { core_.set_blocked(true); }
    ~BlockedScope() { core_.set_blocked(false); }
    BlockedScope(const BlockedScope&) = delete;
    BlockedScope& operator=(const BlockedScope&) = delete;

   private:
    CoreWorker& core_;
  };
  proto::TaskArg to_task_arg(detail::EncodedArg& arg, std::vector<ObjectId>* refs);

  CoreWorkerConfig config_;
  ChannelCache channels_;
  std::shared_ptr<proto::NodeAgent::Stub> agent_;
  std::shared_ptr<proto::Head::Stub> head_;
  MemoryStore store_;
  // Shared with DeleteObjects callbacks, which may run after this is destroyed.
  std::shared_ptr<WarmMappings> warm_mappings_ = std::make_shared<WarmMappings>();
  ReferenceCounter refs_;
  std::unique_ptr<TaskSubmitter> tasks_;
  std::unique_ptr<ActorSubmitter> actors_;
  std::unique_ptr<TaskExecutor> executor_;
  std::unique_ptr<grpc::Server> server_;
  // Workers also serve task streams on a framed Unix socket (see task_stream.h).
  std::unique_ptr<FrameListener> task_listener_;
  std::thread task_accept_thread_;

  std::mutex actor_args_mu_;  // guards actor_args_
  // Arguments of actors created here, kept for restarts (which re-run the factory).
  std::unordered_map<ActorId, std::vector<std::shared_ptr<detail::RefState>>> actor_args_;
  std::mutex contained_mu_;  // guards contained_
  // ObjectRefs inside put objects, released when the object holding them is freed.
  std::unordered_map<ObjectId, std::vector<std::shared_ptr<detail::RefState>>> contained_;
  void hold_contained(const ObjectId& id, std::vector<std::shared_ptr<detail::RefState>> nested);
  // ObjectRefs inside task results owned here, pinned at their owners until the result is
  // freed (see pin_for_result).
  std::unordered_map<ObjectId, std::vector<proto::ObjectRefMsg>> result_pins_;  // guarded by contained_mu_
  void release_result_pins(const ObjectId& result, const std::vector<proto::ObjectRefMsg>& pins);
  /// Adds or removes `borrower` for `ids`, all owned by `owner`, at that owner (this process
  /// included); `wait`: until the owner has applied it.
  void update_borrowers(const std::string& owner, const std::vector<ObjectId>& ids, const std::string& borrower,
                        bool add, bool wait);
  // Lineage: how to rebuild large task results whose node may die (see keep_lineage).
  struct Lineage {
    proto::TaskSpec spec;
    ResourceSet resources;
    proto::SchedulingStrategy strategy;
    int retries = 0;
    int rebuilds = 0;
  };
  std::mutex lineage_mu_;  // guards lineage_
  std::unordered_map<ObjectId, Lineage> lineage_;
  /// Runs the task that made `id` again when its value sits on `lost_node` (hex) and it
  /// has lineage left; false when it cannot be rebuilt.
  bool rebuild(const ObjectId& id, const std::string& lost_node);

  std::mutex blocked_mu_;  // guards blocked_depth_; held across the NotifyWorkerBlocked call, so they stay in order
  int blocked_depth_ = 0;  // calls of this worker blocked in get()/wait()

  std::atomic<bool> stopped_{false};
};

}  // namespace gantry::internal
