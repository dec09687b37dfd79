#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gantry/agent.grpc.pb.h"
#include "gantry/head.grpc.pb.h"
#include "gantry/ids.h"
#include "gantry/worker.grpc.pb.h"
#include "common/executable_store.h"
#include "head/kv_table.h"
#include "rpc/grpc_util.h"
#include "scheduler/node_choice.h"
#include "scheduler/node_resources.h"

namespace gantry::internal {

/// The head: the cluster's control store. Keeps the node table, the actor directory
/// (placement, names, restarts) and a key-value store.
///
/// All tables live behind one mutex (`mu_`). Actor placement runs asynchronously on gRPC
/// callback threads: lease from an agent, then CreateActor on the leased worker.
/// How the head decides a node is dead: it asks every node for its stats each `period`;
/// one that has not answered for `timeout` is dead.
struct HealthCheckConfig {
  bool enabled = true;  // off for the embedded cluster, whose one agent lives in the same process
  std::chrono::milliseconds period{1000};
  std::chrono::milliseconds timeout{5000};
};

// KvWait is an asynchronous (callback) method: a waiting call holds no thread.
class HeadService final : public proto::Head::WithCallbackMethod_KvWait<proto::Head::Service> {
 public:
  explicit HeadService(std::string listen_address, HealthCheckConfig health = {});
  ~HeadService() override;

  /// Serves `service` (not owned; it must outlive stop()) on the head's port too. Before start().
  void add_service(grpc::Service* service) { extra_services_.push_back(service); }
  void start();
  /// Fails waiting calls and stops the server. Idempotent.
  void stop();
  const std::string& address() const { return address_; }

  grpc::Status RegisterNode(grpc::ServerContext*, const proto::RegisterNodeRequest*, proto::Empty*) override;
  grpc::Status CreateActor(grpc::ServerContext*, const proto::ActorSpec*, proto::CreateActorRegistration*) override;
  grpc::Status GetActor(grpc::ServerContext*, const proto::GetActorRequest*, proto::GetActorReply*) override;
  grpc::Status KillActor(grpc::ServerContext*, const proto::KillActorRequest*, proto::Empty*) override;
  grpc::Status ReportWorkerFailure(grpc::ServerContext*, const proto::WorkerFailure*, proto::Empty*) override;
  grpc::Status ListActors(grpc::ServerContext*, const proto::Empty*, proto::ListActorsReply*) override;
  // Key-value store (kv_service.cc).
  grpc::Status KvPut(grpc::ServerContext*, const proto::KvRequest*, proto::KvReply*) override;
  grpc::Status KvGet(grpc::ServerContext*, const proto::KvRequest*, proto::KvReply*) override;
  grpc::ServerUnaryReactor* KvWait(grpc::CallbackServerContext*, const proto::KvRequest*, proto::KvReply*) override;
  grpc::Status KvDel(grpc::ServerContext*, const proto::KvRequest*, proto::KvReply*) override;
  grpc::Status KvAdd(grpc::ServerContext*, const proto::KvRequest*, proto::KvReply*) override;
  grpc::Status KvKeys(grpc::ServerContext*, const proto::KvRequest*, proto::KvKeysReply*) override;
  grpc::Status RegisterJob(grpc::ServerContext*, const proto::JobSpec*, proto::Empty*) override;
  grpc::Status GetJob(grpc::ServerContext*, const proto::JobRequest*, proto::JobSpec*) override;
  grpc::Status FinishJob(grpc::ServerContext*, const proto::JobRequest*, proto::Empty*) override;
  grpc::Status ListJobs(grpc::ServerContext*, const proto::Empty*, proto::ListJobsReply*) override;
  grpc::Status ListNodes(grpc::ServerContext*, const proto::Empty*, proto::ListNodesReply*) override;
  grpc::Status GetClusterView(grpc::ServerContext*, const proto::Empty*, proto::ClusterView*) override;
  // Placement groups (placement_groups.cc).
  grpc::Status CreatePlacementGroup(grpc::ServerContext*, const proto::PlacementGroupSpec*,
                                    proto::CreatePlacementGroupReply*) override;
  grpc::Status GetPlacementGroup(grpc::ServerContext*, const proto::PlacementGroupRequest*,
                                 proto::GetPlacementGroupReply*) override;
  grpc::Status RemovePlacementGroup(grpc::ServerContext*, const proto::PlacementGroupRequest*, proto::Empty*) override;
  grpc::Status ListPlacementGroups(grpc::ServerContext*, const proto::Empty*, proto::ListPlacementGroupsReply*) override;
  // Executables (executables.cc).
  grpc::Status HasExecutable(grpc::ServerContext*, const proto::ExecutableRef*, proto::HasExecutableReply*) override;
  grpc::Status PutExecutable(grpc::ServerContext*, grpc::ServerReader<proto::ExecutableChunk>*, proto::Empty*) override;
  grpc::Status GetExecutable(grpc::ServerContext*, const proto::ExecutableRef*,
                             grpc::ServerWriter<proto::ExecutableChunk>*) override;
  /// Keeps drivers' executables in `dir` for nodes that lack them. Before start().
  void set_executable_dir(const std::string& dir) { executables_ = std::make_unique<ExecutableStore>(dir); }

 private:
  struct Node {
    UniqueId id;
    std::string agent_address;
    std::string object_address;
    std::string hostname;
    int num_gpus = 0;
    uint64_t registered = 0;  // registration order, for listing
    bool alive = true;
    std::chrono::steady_clock::time_point last_seen;  // last answered health check
    std::unique_ptr<NodeResources> shape;  // totals only, for feasibility checks
    ResourceSet available;                 // free at the last health check, less `promised`
    // Actor leases sent to this node: until a health check sent after the lease was
    // granted answers, the node's own figure may not show them.
    struct Promise {
      uint64_t id = 0;
      ResourceSet resources;
      bool granted = false;
      std::chrono::steady_clock::time_point granted_at{};
    };
    std::vector<Promise> promised;
    std::shared_ptr<proto::NodeAgent::Stub> agent;
  };
  struct Actor {
    proto::ActorSpec spec;
    proto::ActorInfo info;
    UniqueId worker_id;
    std::string node_agent;  // agent address of the node it runs on
    bool killed = false;     // killed with no_restart: stays dead
    uint64_t placement = 0;  // generation of the placement attempt in flight
    bool waiting_for_group = false;  // its placement group is not created yet
    bool waiting_for_room = false;   // no node had room at the last look: placed again after the next health check
    std::set<UniqueId> refused_by;   // nodes that cannot start its job's workers
    std::string refusal;             // the last one's reason
  };
  struct Group {
    proto::PlacementGroupInfo info;
    uint64_t order = 0;  // creation order: earlier groups are placed first
  };
  // A ReleaseBundles call to make once mu_ is released.
  struct Release {
    std::shared_ptr<proto::NodeAgent::Stub> agent;
    proto::ReleaseBundlesRequest request;
  };

  // Needs mu_ held. Prepares placing (or re-placing) `actor`; the returned function starts
  // the async call and must run after mu_ is released (callbacks may run inline).
  std::function<void()> place_actor_locked(Actor& actor);
  void on_actor_lease(const ActorId& id, uint64_t placement, const std::string& agent_address, uint64_t promise,
                      const grpc::Status& status, const proto::LeaseReply& reply);
  // The lease behind `promise` on the node at `agent_address` was granted (or failed).
  void settle_promise_locked(const std::string& agent_address, uint64_t promise, bool granted);
  void on_actor_created(const ActorId& id, uint64_t placement, const grpc::Status& status,
                        const proto::CreateActorReply& reply);
  void mark_dead_locked(Actor& actor, const proto::ErrorInfo& cause);
  // The actor's process or node is gone: restart it if its policy allows, else it is dead.
  // Placements to start after unlocking go to `starts`.
  void actor_failed_locked(Actor& actor, const std::string& reason, std::vector<std::function<void()>>& starts);
  void health_loop();
  // Ends a job: its actors die, its placement groups go, its keys are dropped, and every
  // node stops its workers (waited for when `wait_for_agents`). For FinishJob, and for a
  // job whose driver is gone.
  void finish_job(const UniqueId& id, bool wait_for_agents);
  // Picks the node for an actor (see choose_node); null with the reason when none can
  // ever hold it. `take`: the actor goes there (counts its resources as used there until
  // the next health check, advances the spread cursor); else only asks whether one can.
  // Nodes in `excluded` count as dead.
  const Node* pick_node_locked(const ResourceSet& resources, const proto::SchedulingStrategy& strategy,
                               std::string* infeasible_reason, bool take = true,
                               const std::set<UniqueId>* excluded = nullptr);
  void kill_worker(const std::string& agent_address, const UniqueId& worker_id);
  std::vector<const Node*> nodes_in_order_locked() const;

  // Placement groups (placement_groups.cc). group_loop places groups waiting for room on
  // its own thread: it plans over the nodes' current free resources, reserves on each
  // node (all or nothing: a refusal undoes the others), then marks the group created.
  void group_loop();
  void place_waiting_groups();
  // The node of the bundle an actor in a group runs in; null with `why` when none can
  // hold it, or with `*wait` when the group is not created yet. `take` advances the
  // round robin over the group's bundles.
  const Node* pick_bundle_node_locked(const ResourceSet& resources, const proto::SchedulingStrategy& strategy,
                                      std::string* why, bool* wait, int* bundle, bool take);
  // Marks the group removed; the agents' releases go to `releases`, placements of
  // actors that waited for it fail.
  void remove_group_locked(Group& group, const std::string& why, std::vector<Release>& releases);
  static void send_releases(const std::vector<Release>& releases);

  const std::string address_;
  const HealthCheckConfig health_;
  std::vector<grpc::Service*> extra_services_;
  std::thread health_thread_;
  ChannelCache channels_;
  std::unique_ptr<grpc::Server> server_;

  std::mutex mu_;  // guards the tables below
  std::condition_variable cv_;
  std::map<UniqueId, Node> nodes_;
  std::unordered_map<ActorId, Actor> actors_;
  std::unordered_map<std::string, ActorId> named_actors_;
  std::map<UniqueId, proto::JobSpec> jobs_;
  // When each running job's driver was last reachable (drivers that joined by address).
  std::map<UniqueId, std::chrono::steady_clock::time_point> driver_seen_;
  uint64_t next_registration_ = 1;
  uint64_t spread_cursor_ = 0;
  uint64_t next_promise_ = 1;
  std::map<UniqueId, Group> groups_;
  std::unordered_map<std::string, UniqueId> named_groups_;  // live groups only
  uint64_t next_group_order_ = 1;
  bool groups_changed_ = false;  // wakes group_loop: a group, node or free resources changed
  std::thread group_thread_;
  std::unique_ptr<ExecutableStore> executables_;
  bool stopping_ = false;
  int calls_in_flight_ = 0;  // async placement calls holding `this`

  // The key-value store has its own lock: rendezvous traffic does not wait on placement.
  // Lock order: mu_ before kv_mu_.
  std::mutex kv_mu_;  // guards kv_, kv_stopping_
  KvTable kv_;
  bool kv_stopping_ = false;
  /// Drops a finished job's keys; its waiters fail.
  void drop_job_keys(const std::string& job_id);
  /// Fails every KvWait (the head is stopping).
  void stop_kv_waits();
};

}  // namespace gantry::internal
