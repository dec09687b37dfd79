#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gantry/agent.grpc.pb.h"
#include "gantry/head.grpc.pb.h"
#include "gantry/worker.grpc.pb.h"
#include "rpc/grpc_util.h"

namespace gantry::internal {

using Json = nlohmann::json;

/// How many dead actors /api/actors lists unless asked for another number.
inline constexpr int kDeadActorsListed = 1000;

/// A request the API cannot answer: the HTTP status and what was wrong.
struct ApiError {
  int status = 400;
  std::string message;
};

/// Holds the last value of an expensive gathering for `ttl`, so that many pollers share
/// one gathering. Callers that find it stale while another refreshes it wait for that one.
/// Thread-safe.
template <typename T>
class Cached {
 public:
  explicit Cached(std::chrono::milliseconds ttl) : ttl_(ttl) {}
  /// Forgets the value: the next get() gathers again.
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    value_.reset();
  }
  std::shared_ptr<const T> get(const std::function<T()>& make) {
    std::lock_guard<std::mutex> lock(mu_);
    auto now = std::chrono::steady_clock::now();
    if (!value_ || now - at_ >= ttl_) {
      value_ = std::make_shared<const T>(make());
      at_ = std::chrono::steady_clock::now();
    }
    return value_;
  }

 private:
  const std::chrono::milliseconds ttl_;
  std::mutex mu_;  // guards value_, at_; held while gathering
  std::shared_ptr<const T> value_;
  std::chrono::steady_clock::time_point at_;
};

/// The cluster as the dashboard and `gantry timeline` see it: gathered over gRPC from the
/// head (nodes, actors, jobs, placement groups, the key-value store), from every node's
/// agent (resources, store, CPU, memory, GPUs, logs, stacks) and from every worker and
/// driver (tasks in flight, what ran, objects owned). Agents answer for their node; this
/// class gathers. Gatherings are cached briefly (nodes 1 s, tasks and actors 2 s). Thread-safe.
/// Methods throw ApiError for bad requests and for a head that does not answer.
class ClusterSource {
 public:
  explicit ClusterSource(std::string head_address);

  const std::string& head_address() const { return head_address_; }
  Json overview();
  Json nodes();
  /// Every live actor, then at most `dead_limit` dead ones ("dead_not_listed" counts the
  /// rest): the head keeps dead actors, and a cluster that made thousands would otherwise
  /// send them all on every poll.
  Json actors(int dead_limit = kDeadActorsListed);
  void kill_actor(const std::string& actor_id_hex, bool no_restart);
  Json tasks();
  Json objects();
  Json placement_groups();
  Json jobs();
  Json job(const std::string& id);
  Json job_logs(const std::string& id, uint64_t offset);
  Json submit_job(const Json& body);
  Json stop_job(const std::string& id);
  Json log_files(const std::string& node);
  /// `offset` -1: the last `tail` lines.
  Json read_log(const std::string& node, const std::string& file, int64_t offset, int tail);
  Json stacks(const std::string& node, int pid);
  /// Train runs and Tune experiments published in the cluster's key-value store.
  Json train_runs();
  Json train_run(const std::string& name);
  Json tune_experiments();
  Json tune_experiment(const std::string& name);
  /// Every worker's task executions, as a Chrome trace (chrome://tracing, Perfetto).
  Json timeline();
  /// The cluster's metrics in Prometheus text format.
  std::string metrics();

  /// The published records under "gantry.dashboard/<kind>/", parsed (unparsable ones skipped).
  std::vector<Json> published(const std::string& kind);

  /// A process that owns tasks and objects: a running job's driver, or a worker of a node
  /// that answered (which also executes tasks).
  struct Owner {
    std::string address;
    std::string node_id;  // hex; empty for a driver
    bool executes = false;
  };
  /// Running jobs' drivers, then the workers of every live node whose agent answered;
  /// `unreachable_nodes`, if given, counts the live nodes that did not.
  std::vector<Owner> owners(int* unreachable_nodes = nullptr);

 private:
  struct NodeEntry {
    proto::NodeInfo info;
    bool answered = false;
    proto::NodeStats stats;
  };
  struct WorkerEvents {
    std::string address;
    std::string node_id;  // hex
    proto::TaskEvents events;
  };
  struct Ended {
    int64_t finished = 0;
    int64_t failed = 0;
    Ended& operator+=(const Ended& o) {
      finished += o.finished;
      failed += o.failed;
      return *this;
    }
  };
  struct TaskGather {
    std::vector<proto::OwnedState> owned;
    std::vector<WorkerEvents> executed;
    int asked = 0;
    int silent = 0;
    // Finished and failed executions of every worker seen since this source started,
    // those that exited included: by function, and actor calls by actor id (binary).
    std::map<std::string, Ended> ended_by_function;
    std::map<std::string, Ended> ended_by_actor;
  };
  // What one worker had finished and failed when it last answered.
  struct WorkerTally {
    int pid = 0;
    std::string node_id;  // hex
    std::map<std::string, Ended> by_function;
    std::string actor_id;  // binary; empty when it hosts none
    Ended actor_calls;
    // Adds these counts to totals by function and by actor.
    void add_to(std::map<std::string, Ended>& functions, std::map<std::string, Ended>& actors) const {
      for (const auto& [name, e] : by_function) functions[name] += e;
      if (!actor_id.empty()) actors[actor_id] += actor_calls;
    }
  };

  std::vector<Owner> owners_of(const std::vector<NodeEntry>& nodes, int* unreachable_nodes);
  // Records what the workers that answered have ended, moves the counts of workers that are
  // gone (no longer listed by their node's agent, or on a dead node) into the retired
  // totals, and fills g's totals: a worker's exit must not lower a counter.
  void tally(const std::vector<NodeEntry>& nodes, TaskGather& g);
  std::vector<NodeEntry> gather_nodes();
  // `ended`: also the executions that ended (for the timeline), not only running ones.
  TaskGather gather_tasks(int events_limit, bool ended);
  std::shared_ptr<const std::vector<NodeEntry>> cached_nodes();
  std::shared_ptr<const TaskGather> cached_tasks();
  std::shared_ptr<proto::NodeAgent::Stub> agent_of(const std::string& node_hex);
  std::shared_ptr<const proto::ListActorsReply> list_actors();
  /// `gantry job submit`'s jobs; none on an embedded cluster, which takes no submissions.
  proto::ListSubmissionsReply list_submissions();
  bool takes_submissions();

  const std::string head_address_;
  std::shared_ptr<proto::Head::Stub> head_;
  std::shared_ptr<proto::JobService::Stub> jobs_;
  ChannelCache channels_;
  Cached<std::vector<NodeEntry>> nodes_cache_{std::chrono::milliseconds(1000)};
  Cached<TaskGather> tasks_cache_{std::chrono::milliseconds(2000)};
  Cached<proto::ListActorsReply> actors_cache_{std::chrono::milliseconds(2000)};
  std::mutex tally_mu_;                           // guards the three below
  std::map<std::string, WorkerTally> tallies_;    // by worker address: the workers not yet gone
  std::map<std::string, Ended> retired_functions_;  // what workers that are gone had ended
  std::map<std::string, Ended> retired_actors_;
};

/// {"CPU": 2, ...} from a proto Resources (fixed point).
Json resources_json(const proto::Resources& r);

}  // namespace gantry::internal
