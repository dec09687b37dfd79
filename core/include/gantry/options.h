#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace gantry {

class PlacementGroup;

/// How `gantry::init` starts or joins a cluster.
///
///     gantry::init(argc, argv, {.num_cpus = 4, .num_gpus = 2});
struct InitOptions {
  /// CPUs this node offers; -1 uses the machine's core count.
  int num_cpus = -1;
  /// GPUs this node offers. -1 detects them through the CUDA runtime (zero without a
  /// driver); a number declares that many *logical* GPUs, ids 0..n-1.
  int num_gpus = -1;
  /// Custom resources, e.g. {{"TPU", 4}}.
  std::map<std::string, double> resources{};
  /// Bytes of shared memory for large objects; -1 uses 30% of physical memory.
  int64_t object_store_memory = -1;
  /// Where session directories go (logs, sockets); empty uses $TMPDIR/gantry or /tmp/gantry.
  std::string temp_dir{};
  /// spdlog level name for gantry's own logs on stderr: trace, debug, info, warn, error, off.
  std::string log_level = "warn";
  /// Print worker stdout/stderr lines on the driver's terminal (always kept in the logs).
  bool log_to_driver = true;
  /// Cluster address to join; empty starts the embedded local cluster.
  std::string address{};
  /// Serve the web dashboard, its JSON API and Prometheus /metrics from the embedded
  /// cluster (`gantry::dashboard_url()` names it). A cluster started with
  /// `gantry start --head` serves its own; this is then ignored.
  bool dashboard = false;
  /// The embedded dashboard's port on 127.0.0.1; 0 picks a free one.
  int dashboard_port = 8265;
};

/// Which node a task or actor runs on.
///
///     .options({.scheduling = gantry::SchedulingStrategy::spread()})
///     .options({.scheduling = gantry::SchedulingStrategy::node_affinity(id, /*soft=*/true)})
struct SchedulingStrategy {
  enum class Kind {
    /// The submitting node while it has room, else the first node (in joining order)
    /// that has room; work waits where it can eventually run.
    kDefault,
    /// Round robin over the nodes that have room, one after another.
    kSpread,
    /// On `node_id` (as `gantry::nodes()` and `runtime_context().node_id` give it). If
    /// that node is dead or can never hold the request: with `soft`, wherever kDefault
    /// would put it; else the submission fails with gantry::InfeasibleError.
    kNodeAffinity,
    /// In a bundle of a placement group: bundle `bundle_index`, or any bundle of the
    /// group with room when it is -1. The work uses the bundle's reserved resources, not
    /// the node's. It waits while the group is not created yet; a request larger than
    /// the bundle, or a removed group, fails with gantry::InfeasibleError.
    kPlacementGroup,
  };
  Kind kind = Kind::kDefault;
  std::string node_id{};
  bool soft = false;
  std::string placement_group_id{};  ///< hex, PlacementGroup::id()
  int bundle_index = -1;

  static SchedulingStrategy spread() { return {Kind::kSpread, {}, false}; }
  static SchedulingStrategy node_affinity(std::string node_id, bool soft = false) {
    return {Kind::kNodeAffinity, std::move(node_id), soft};
  }
  static SchedulingStrategy placement_group(const PlacementGroup& group, int bundle_index = -1);
};

/// How a placement group's bundles are laid out over nodes.
enum class PlacementStrategy {
  kPack,          ///< on as few nodes as possible; more when one cannot hold them all
  kSpread,        ///< on as many nodes as possible; nodes are shared when there are too few
  kStrictPack,    ///< all on one node, or the group waits (or is infeasible)
  kStrictSpread,  ///< each on a different node, or the group waits (or is infeasible)
};

/// The resources of one bundle, e.g. {{"CPU", 1}, {"GPU", 1}}.
using Bundle = std::map<std::string, double>;

/// What `gantry::create_placement_group` reserves.
///
///     auto pg = gantry::create_placement_group({.bundles = {{{"CPU", 1}}, {{"CPU", 1}}},
///                                               .strategy = gantry::PlacementStrategy::kStrictSpread});
struct PlacementGroupOptions {
  std::vector<Bundle> bundles{};
  PlacementStrategy strategy = PlacementStrategy::kPack;
  /// A name makes the group findable with `gantry::get_placement_group(name)`.
  std::string name{};
};

/// Resources and retry policy of one task. Fields are in declaration order so designated
/// initialisers read naturally:
///
///     gantry::task(f).options({.num_cpus = 1, .num_gpus = 0.5, .max_retries = 3}).remote(x);
struct TaskOptions {
  double num_cpus = 1;
  /// Fractions below 1 share a device; whole numbers above 1 take that many devices.
  double num_gpus = 0;
  /// Bytes of memory the task needs (scheduling only, not enforced).
  double memory = 0;
  std::map<std::string, double> resources{};
  /// Times a task is re-run when its worker process dies. -1: unlimited.
  int max_retries = 3;
  /// Also retry when user code throws.
  bool retry_exceptions = false;
  /// Name shown in logs and errors instead of the registered function name.
  std::string name{};
  /// Where it runs; see SchedulingStrategy.
  SchedulingStrategy scheduling{};
};

/// Resources, name and restart policy of an actor.
///
///     gantry::actor(Counter::create).options({.name = "c", .num_gpus = 1}).remote(5);
struct ActorOptions {
  /// A name makes the actor findable with `gantry::get_actor<T>(name)`.
  std::string name{};
  /// CPUs held for the actor's lifetime. Actors hold none by default, so a laptop can
  /// run more actors than it has cores; ask for CPUs to reserve them.
  double num_cpus = 0;
  double num_gpus = 0;
  double memory = 0;
  std::map<std::string, double> resources{};
  /// Times the actor is re-created (its factory re-run) after its process dies. -1: unlimited.
  int max_restarts = 0;
  /// Times a method call in flight when the actor died is re-sent after a restart.
  int max_task_retries = 0;
  /// Outlives the driver that created it: it stays (and restarts within max_restarts)
  /// after that driver's job ends, until `gantry::kill`. Give it a name so later drivers
  /// find it with `gantry::get_actor`. Its factory's arguments should be values, not
  /// ObjectRefs, as their owner goes with the driver.
  bool detached = false;
  /// Where it runs; see SchedulingStrategy.
  SchedulingStrategy scheduling{};
  /// How many of its method calls may run at once, on a pool of this many threads in
  /// the actor's worker; must be at least 1 (`remote()` throws gantry::Error otherwise).
  /// With 1 (the default) calls run one at a time, in each caller's order. With N > 1
  /// calls start in the order they arrive and up to N overlap, so a long call (a training
  /// loop) does not hold up short ones (a status poll, a stop request); results come back
  /// as each call finishes. The actor's own state is then shared between threads: making
  /// its methods thread-safe (atomics, a mutex) is up to the actor.
  ///
  ///     auto t = gantry::actor(Trainer::create).options({.max_concurrency = 2}).remote();
  ///     auto done = t.task(&Trainer::train).remote();  // long
  ///     t.task(&Trainer::stop).remote().get();          // runs beside it
  int max_concurrency = 1;
};

/// How `gantry::cancel` stops a task.
///
///     gantry::cancel(ref);                   // drop it if queued, else ask it to stop
///     gantry::cancel(ref, {.force = true});  // a running task's worker is killed
struct CancelOptions {
  /// Kill the worker process of a task that was sent to one (it is replaced, and the
  /// task is not retried). Not for actor calls: that would kill the actor.
  bool force = false;
};

/// One node of the cluster, as `gantry::nodes()` lists it.
struct NodeInfo {
  std::string node_id;  ///< hex, for SchedulingStrategy::node_affinity
  std::string address;  ///< its node agent's address
  std::string hostname;
  bool alive = true;
  std::map<std::string, double> resources;  ///< totals
};

/// What a task or actor can learn about where it runs; see `gantry::runtime_context()`.
struct RuntimeContext {
  std::string node_id;
  /// The address other nodes reach this node at ("127.0.0.1" on the embedded cluster):
  /// where a process here can listen for its peers (a rendezvous, a collective group).
  std::string node_ip;
  /// Whether the cluster's TCP endpoints use TLS (`gantry start --tls-cert`).
  bool tls = false;
  std::string worker_id;
  std::string job_id;
  std::string task_id;   ///< empty in the driver
  std::string actor_id;  ///< empty outside an actor
  std::string function;  ///< the task's function or the actor's method
  int pid = 0;
  bool is_driver = true;
  /// This session's directory: logs/ holds driver.log, and per worker its gantry log
  /// (worker-PID.log) and its prefixed stdout/stderr (worker-PID.out).
  std::string session_dir;
  /// The resources assigned to the running task or actor, e.g. {{"CPU", 1}, {"GPU", 0.5}}.
  std::map<std::string, double> assigned_resources;
  std::vector<int> gpu_ids;
};

}  // namespace gantry
