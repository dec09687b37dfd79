#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "agent/cluster_view.h"
#include "agent/host_monitor.h"
#include "agent/node_logs.h"
#include "agent/object_transfer.h"
#include "agent/worker_pool.h"
#include "common/executable_store.h"
#include "gantry/agent.grpc.pb.h"
#include "gantry/head.grpc.pb.h"
#include "gantry/ids.h"
#include "object_store/object_store.h"
#include "rpc/grpc_util.h"
#include "scheduler/bundles.h"
#include "scheduler/node_choice.h"
#include "scheduler/node_resources.h"

namespace gantry::internal {

struct NodeAgentConfig {
  UniqueId node_id;
  /// "unix:/path", or "host:port" (port 0 picks a free one; address() then names it).
  std::string listen_address;
  std::string head_address;
  ResourceSet total;           // includes CPU, GPU, memory and custom resources
  int num_gpus = 0;
  /// The GPUs are devices found through the driver (their figures come from NVML), not
  /// logical ones declared with --num-gpus.
  bool physical_gpus = false;
  /// The session's logs directory: what ListLogs and ReadLog serve.
  std::string logs_dir;
  std::string store_dir;
  uint64_t store_capacity = 0;
  /// Settings every worker of this node gets (agent and head address, session, token).
  std::map<std::string, std::string> worker_environment;
  /// Directories a job's executable must be under for this node to run it; empty allows
  /// any (`gantry start --allowed-executables`).
  std::vector<std::string> allowed_executable_dirs;
  /// Where executables fetched from the head are kept, by digest (the session's
  /// `executables`; on the head's machine the head keeps its copies there too).
  std::string executable_dir;
  /// Workers of this job started with the agent (the embedded cluster's driver job).
  UniqueId prestart_job;
  int prestart_workers = 0;
};

/// The node agent: grants leases on worker processes for resource shapes, keeps a pool of
/// warm workers, and keeps the ledger of the node's shared-memory store.
///
/// All state lives behind one mutex (`mu_`); RPC handlers take it briefly. A lease request
/// that cannot be granted yet waits in `pending_` until resources and a worker are free.
class NodeAgent final : public proto::NodeAgent::Service {
 public:
  explicit NodeAgent(NodeAgentConfig config);
  ~NodeAgent() override;

  /// Starts the gRPC server, registers with the head and pre-starts workers.
  void start();
  /// Fails waiting requests, stops workers and the server. Idempotent.
  void stop();

  const std::string& address() const { return config_.listen_address; }
  const UniqueId& node_id() const { return config_.node_id; }

  grpc::Status RequestLease(grpc::ServerContext* ctx, const proto::LeaseRequest* req,
                            proto::LeaseReply* reply) override;
  grpc::Status ReturnLease(grpc::ServerContext* ctx, const proto::ReturnLeaseRequest* req,
                           proto::Empty* reply) override;
  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const proto::RegisterWorkerRequest* req,
                              proto::RegisterWorkerReply* reply) override;
  grpc::Status NotifyWorkerBlocked(grpc::ServerContext* ctx, const proto::WorkerBlocked* req,
                                   proto::Empty* reply) override;
  grpc::Status CreateObject(grpc::ServerContext* ctx, const proto::CreateObjectRequest* req,
                            proto::CreateObjectReply* reply) override;
  grpc::Status DeleteObjects(grpc::ServerContext* ctx, const proto::DeleteObjectsRequest* req,
                             proto::Empty* reply) override;
  grpc::Status KillWorker(grpc::ServerContext* ctx, const proto::KillWorkerRequest* req,
                          proto::Empty* reply) override;
  grpc::Status GetNodeStats(grpc::ServerContext* ctx, const proto::Empty* req,
                            proto::NodeStats* reply) override;
  grpc::Status JobFinished(grpc::ServerContext* ctx, const proto::JobRequest* req, proto::Empty* reply) override;
  grpc::Status PullObject(grpc::ServerContext* ctx, const proto::PullObjectRequest* req,
                          proto::PullObjectReply* reply) override;
  grpc::Status ReadObject(grpc::ServerContext* ctx, const proto::ReadObjectRequest* req,
                          grpc::ServerWriter<proto::ObjectChunk>* writer) override;
  grpc::Status ReserveBundles(grpc::ServerContext* ctx, const proto::ReserveBundlesRequest* req,
                              proto::ReserveBundlesReply* reply) override;
  grpc::Status ReleaseBundles(grpc::ServerContext* ctx, const proto::ReleaseBundlesRequest* req,
                              proto::Empty* reply) override;
  grpc::Status ListLogs(grpc::ServerContext* ctx, const proto::Empty* req, proto::ListLogsReply* reply) override;
  grpc::Status ReadLog(grpc::ServerContext* ctx, const proto::ReadLogRequest* req, proto::ReadLogReply* reply) override;
  /// Stacks of one of this node's workers only (eu-stack or gdb, run by the agent).
  grpc::Status GetStacks(grpc::ServerContext* ctx, const proto::StacksRequest* req, proto::StacksReply* reply) override;

 private:
  enum class WorkerState { kStarting, kIdle, kLeased, kActor, kDead };
  struct Worker {
    UniqueId id;
    UniqueId job_id;
    pid_t pid = 0;
    std::vector<int> gpu_ids;
    std::string address;
    std::string task_address;  // framed task endpoint
    WorkerState state = WorkerState::kStarting;
    uint64_t lease_id = 0;
    bool blocked = false;  // in get()/wait(): its CPUs are lent back to the node
    bool detached = false;  // hosts a detached actor: outlives its job
  };
  // A placement group's bundle reserved on this node: (group, bundle index).
  using BundleKey = std::pair<UniqueId, int>;
  struct Lease {
    UniqueId worker_id;
    Allocation allocation;
    bool for_actor = false;
    std::optional<BundleKey> bundle;  // allocated from this bundle, not from the node
  };
  struct PendingLease {
    proto::LeaseRequest request;
    UniqueId job_id;
    ResourceSet resources;
    Placement placement;
    std::optional<Allocation> allocation;  // reserved while a worker starts
    std::optional<BundleKey> bundle;       // where `allocation` came from, in a group
    bool done = false;
    proto::LeaseReply reply;
  };

  // All *_locked methods need mu_ held.
  void try_grant_locked();
  Worker* find_idle_worker_locked(const UniqueId& job_id, const std::vector<int>& gpu_ids);
  void start_worker_locked(const UniqueId& job_id, const std::vector<int>& gpu_ids);
  // Makes sure the job's launch spec is known, asking the head the first time. Empty when
  // it is, else why not. Takes mu_ itself; call without it.
  // A detached actor's job may have finished (`finished_ok`): its spec still starts it.
  std::string ensure_job(const UniqueId& job_id, bool finished_ok = false);
  void release_lease_locked(uint64_t lease_id);
  // Where a lease request that did not come from another node should go: this node
  // (true), another node (`reply` names it), or nowhere (`reply` has the error).
  bool place_here(grpc::ServerContext* ctx, const proto::LeaseRequest& req, const ResourceSet& request,
                  proto::LeaseReply* reply);
  // place_here for work in a placement group: waits (asking the head) until the group is
  // created, then picks the node of a bundle that can hold the request.
  bool place_in_group(grpc::ServerContext* ctx, const proto::LeaseRequest& req, const ResourceSet& request,
                      const Placement& placement, proto::LeaseReply* reply);
  // Allocates for `p` from the node, or from its group's bundles here; records which.
  bool allocate_locked(PendingLease& p);
  // Gives an allocation back to the bundle it came from (if the bundle still exists) or
  // to the node.
  void give_back_locked(const std::optional<BundleKey>& bundle, const Allocation& allocation);
  // Why a request in a placement group cannot run in its bundle(s) on this node; empty
  // when it can.
  std::string bundle_infeasible_locked(const Placement& placement, const ResourceSet& request) const;
  // place_here's decision over one copy of the node table; nullopt when no node fits and
  // this is not the `last_try` (the table may be stale).
  std::optional<bool> place_on(const proto::LeaseRequest& req, const ResourceSet& request, const Placement& placement,
                               const std::vector<ClusterView::Node>& nodes, proto::LeaseReply* reply, bool last_try);
  void on_worker_exit(const UniqueId& worker_id, pid_t pid, const std::string& reason);
  // The file to run for `job`: its own path when that holds the same program, else the
  // copy fetched (once) from the head by digest. Empty with `why` when neither works.
  std::string local_executable(const proto::JobSpec& job, std::string* why);
  // Shared libraries `path` needs that this node lacks (as `ldd` reports them).
  static std::vector<std::string> missing_libraries(const std::string& path);

  NodeAgentConfig config_;
  // GetNodeStats in two parts: the agent's tables (takes mu_), then the machine's figures.
  grpc::Status fill_node_tables(proto::NodeStats* reply);
  void add_host_figures(proto::NodeStats* reply);

  std::unique_ptr<ObjectStore> store_;
  HostMonitor host_;                    // thread-safe on its own
  std::unique_ptr<GpuMonitor> gpu_monitor_;  // null with logical GPUs; thread-safe
  NodeLogs logs_;
  std::shared_ptr<proto::Head::Stub> head_;
  ChannelCache channels_;
  std::unique_ptr<ClusterView> view_;
  std::unique_ptr<ObjectTransfer> transfer_;
  std::unique_ptr<ExecutableStore> executables_;
  // Digests of job executables already hashed here, by path, with the file's identity
  // then (device, inode, size, modification time): a test suite or a sweep starts many
  // jobs of one program. Guarded by mu_.
  struct KnownFile {
    uint64_t device = 0, inode = 0, size = 0;
    int64_t mtime_ns = 0;
    std::string digest;
  };
  std::unordered_map<std::string, KnownFile> known_files_;
  uint64_t spread_cursor_ = 0;  // guarded by mu_

  std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  NodeResources resources_;
  std::unordered_map<UniqueId, Worker> workers_;
  std::unordered_map<uint64_t, Lease> leases_;
  std::unordered_map<UniqueId, WorkerLaunchSpec> jobs_;  // jobs whose workers may start here
  std::unordered_set<UniqueId> finished_jobs_;           // never start workers for these again
  std::deque<std::shared_ptr<PendingLease>> pending_;
  std::map<BundleKey, BundleLedger> bundles_;
  uint64_t next_lease_id_ = 1;
  int consecutive_start_failures_ = 0;
  std::string last_start_failure_;
  bool stopping_ = false;

  // The object port (see ObjectTransfer::serve_socket): TCP nodes without TLS.
  std::unique_ptr<FrameListener> object_listener_;
  std::thread object_accept_thread_;
  std::unordered_set<int> object_readers_;  // sockets being served; guarded by mu_, shut and waited for by stop()

  std::unique_ptr<WorkerPool> pool_;  // after the state its exit callback touches
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace gantry::internal
