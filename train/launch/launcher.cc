#include "launcher.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <sstream>

namespace gantry::train::launch {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

// How long a rank's program gets between SIGTERM and SIGKILL at teardown.
constexpr int kTerminateGraceMs = 3000;
// How long a poll waits in the worker for output before answering with none.
constexpr int kPollWaitMs = 500;
// How long the launcher waits between looks at its stop flag.
constexpr milliseconds kTick(250);
// A worker that takes longer than this to start (or to answer a short call) has failed.
constexpr milliseconds kWorkerAnswerLimit = seconds(120);
// Elastic placement: how long the full group, then each smaller one, may take to fit.
constexpr milliseconds kFullGroupWait = seconds(3);
constexpr milliseconds kSmallerGroupWait = seconds(1);
// How often a group that waits for room says so.
constexpr milliseconds kWaitingNotice = seconds(10);

/// A stop was asked for (Ctrl-C, SIGTERM).
struct Interrupted {};

/// The attempt failed in a way a restart may mend; the message says which rank, where, what.
struct AttemptFailed {
  std::string message;
};

std::string format_amount(double amount) {
  std::ostringstream out;
  out << amount;
  return out.str();
}

std::string generated_run_id() {
  std::random_device random;
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", random());
  return std::string("gantry-train-") + hex;
}

std::string describe_bundle(const Bundle& bundle) {
  std::string out;
  for (const auto& [name, amount] : bundle) out += (out.empty() ? "" : ", ") + name + ": " + format_amount(amount);
  return "{" + out + "}";
}

std::string short_node(const std::string& node_id) {
  UniqueId id = UniqueId::from_hex(node_id);
  return id.is_nil() ? node_id : id.short_hex();
}

}  // namespace

const char* to_string(Launcher::State state) {
  switch (state) {
    case Launcher::State::kPlacing:
      return "placing";
    case Launcher::State::kStarting:
      return "starting";
    case Launcher::State::kRunning:
      return "running";
    case Launcher::State::kRestarting:
      return "restarting";
    case Launcher::State::kSucceeded:
      return "succeeded";
    case Launcher::State::kFailed:
      return "failed";
    case Launcher::State::kInterrupted:
      return "interrupted";
  }
  return "?";
}

Launcher::Launcher(LaunchOptions options, std::string program, std::string working_dir,
                   std::function<int()> stop_signal)
    : options_(std::move(options)),
      program_(std::move(program)),
      working_dir_(std::move(working_dir)),
      stop_signal_(std::move(stop_signal)),
      run_id_(options_.name.empty() ? generated_run_id() : options_.name) {}

void Launcher::transition(State next, const std::string& detail) {
  state_ = next;
  std::cout << std::flush;
  std::cerr << "gantry train launch: " << to_string(next) << ": " << detail << std::endl;
}

void Launcher::check_stop() {
  if (stop_signal_() != 0) throw Interrupted{};
}

template <typename T>
T Launcher::await(const ObjectRef<T>& ref, milliseconds limit, const std::string& what) {
  auto deadline = Clock::now() + limit;
  while (true) {
    check_stop();
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (left <= milliseconds(0))
      throw Error(what + " did not answer within " + std::to_string(limit.count() / 1000) + " s");
    try {
      return ref.get(std::min(left, kTick));
    } catch (const GetTimeoutError&) {
    }
  }
}

std::string Launcher::where(const Worker& w) const {
  return "node " + short_node(w.place.node_id) + " (" + w.place.hostname + ", " + w.place.node_ip + ")";
}

std::string Launcher::rank_name(const Worker& w) const { return "rank " + std::to_string(w.rank.rank); }

void Launcher::print_lines(const Worker& w, size_t index, const std::vector<OutputLine>& lines) {
  if (lines.empty()) return;
  std::string prefix =
      w.assigned ? "[rank " + std::to_string(w.rank.rank) + "] " : "[worker " + std::to_string(index) + "] ";
  std::string out, err;
  for (const OutputLine& line : lines) (line.stream == ChildProcess::kStderr ? err : out) += prefix + line.text + "\n";
  // Whole lines per write, so ranks' lines do not interleave mid-line.
  if (!out.empty()) {
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
  }
  if (!err.empty()) {
    std::fwrite(err.data(), 1, err.size(), stderr);
    std::fflush(stderr);
  }
}

int Launcher::run() {
  for (int restart = 0;; ++restart) {
    Outcome outcome;
    try {
      outcome = run_attempt(restart);
    } catch (const Interrupted&) {
      outcome.state = State::kInterrupted;
    }
    // A signal to the launcher's terminal also reaches an embedded cluster's workers: their
    // deaths are the stop, not a failure.
    if (outcome.state != State::kSucceeded && stop_signal_() != 0) outcome.state = State::kInterrupted;
    if (outcome.state == State::kSucceeded) {
      transition(State::kSucceeded, "every rank exited 0 (run " + run_id_ + ")");
      return 0;
    }
    if (outcome.state == State::kInterrupted) {
      int sig = stop_signal_();
      const char* name = sig > 0 ? ::sigabbrev_np(sig) : nullptr;
      transition(State::kInterrupted, std::string("stopped by SIG") + (name ? name : "?") + "; every rank was ended");
      return 128 + (sig > 0 ? sig : 2);
    }
    if (!outcome.retryable || restart >= options_.max_restarts) {
      transition(State::kFailed, outcome.failure + (outcome.retryable ? "; no restarts left (--max-restarts " +
                                                                            std::to_string(options_.max_restarts) + ")"
                                                                      : ""));
      return 1;
    }
    transition(State::kRestarting, outcome.failure + "; restarting the group (restart " + std::to_string(restart + 1) +
                                       " of " + std::to_string(options_.max_restarts) + ")");
  }
}

PlacementGroup Launcher::place_group() {
  Bundle bundle{{"CPU", options_.cpus_per_worker}};
  if (options_.gpus_per_worker > 0) bundle["GPU"] = options_.gpus_per_worker;
  const bool elastic = options_.min_workers < options_.workers;
  int count = options_.workers;
  while (true) {
    check_stop();
    transition(State::kPlacing, std::to_string(count) + " worker(s) of " + describe_bundle(bundle) + ", " +
                                    placement_name(options_.placement) + " (run " + run_id_ + ")");
    PlacementGroup group;
    try {
      group = create_placement_group({.bundles = std::vector<Bundle>(static_cast<size_t>(count), bundle),
                                      .strategy = options_.placement,
                                      .name = run_id_ + "/" + std::to_string(++placement_attempts_)});
    } catch (const InfeasibleError& e) {
      if (elastic && count > options_.min_workers) {
        --count;
        continue;
      }
      throw;
    }
    // Elastic: the full group gets a moment to fit, each smaller one less; at the minimum
    // (or not elastic) the launch waits for room as long as it takes.
    bool may_shrink = elastic && count > options_.min_workers;
    milliseconds budget = count == options_.workers ? kFullGroupWait : kSmallerGroupWait;
    auto start = Clock::now();
    auto next_notice = start + kWaitingNotice;
    bool placed = false;
    while (!placed) {
      try {
        check_stop();
      } catch (const Interrupted&) {
        remove_placement_group(group);
        throw;
      }
      placed = group.wait(kTick);
      if (placed) break;
      if (may_shrink && Clock::now() - start >= budget) break;
      if (Clock::now() >= next_notice) {
        next_notice += kWaitingNotice;
        std::string free;
        for (const auto& [name, amount] : available_resources())
          if (name == "CPU" || name == "GPU") free += (free.empty() ? "" : ", ") + name + " " + format_amount(amount);
        std::cerr << "gantry train launch: waiting for room for " << count << " worker(s) of "
                  << describe_bundle(bundle) << "; free now: " << (free.empty() ? "none" : free) << std::endl;
      }
    }
    if (placed) return group;
    remove_placement_group(group);
    // What is free now bounds the next try (per-node fragmentation may leave less).
    auto free = available_resources();
    double fit = std::floor(free["CPU"] / options_.cpus_per_worker);
    if (options_.gpus_per_worker > 0) fit = std::min(fit, std::floor(free["GPU"] / options_.gpus_per_worker));
    count = std::clamp(std::min(count - 1, static_cast<int>(fit)), options_.min_workers, count - 1);
  }
}

Launcher::Outcome Launcher::run_attempt(int restart_count) {
  PlacementGroup group;
  try {
    group = place_group();
  } catch (const InfeasibleError& e) {
    return {State::kFailed, std::string("the cluster can never hold the group: ") + e.what(), false};
  }
  std::vector<Worker> workers(group.bundles().size());
  Outcome outcome;
  try {
    start_ranks(workers, group, restart_count);
    outcome = monitor(workers);
  } catch (const AttemptFailed& failed) {
    outcome = {State::kFailed, failed.message};
  } catch (const Interrupted&) {
    tear_down(workers, group);
    throw;
  } catch (const Error& e) {
    outcome = {State::kFailed, e.what()};
  }
  tear_down(workers, group);
  return outcome;
}

void Launcher::start_ranks(std::vector<Worker>& workers, const PlacementGroup& group, int restart_count) {
  for (size_t i = 0; i < workers.size(); ++i)
    workers[i].actor = gantry::actor(RankWorker::create)
                           .options({.num_cpus = static_cast<double>(options_.cpus_per_worker),
                                     .num_gpus = static_cast<double>(options_.gpus_per_worker),
                                     .scheduling = SchedulingStrategy::placement_group(group, static_cast<int>(i)),
                                     .max_concurrency = 2})
                           .remote();
  transition(State::kStarting, std::to_string(workers.size()) + " worker(s)");
  std::vector<ObjectRef<WorkerPlace>> places;
  for (Worker& w : workers) places.push_back(w.actor.task(&RankWorker::place).remote());
  std::vector<WorkerPlacement> placements;
  for (size_t i = 0; i < workers.size(); ++i) {
    try {
      workers[i].place = await(places[i], kWorkerAnswerLimit, "its actor");
    } catch (const Error& e) {
      throw AttemptFailed{"worker " + std::to_string(i) + " did not start: " + e.what()};
    }
    placements.push_back({workers[i].place.node_id, workers[i].place.cuda_visible_devices});
  }
  RankLayout layout = assign_ranks(placements);
  for (size_t i = 0; i < workers.size(); ++i) {
    workers[i].rank = layout.workers[i];
    workers[i].assigned = true;
  }

  Worker& master = workers[static_cast<size_t>(layout.worker_of_rank[0])];
  Rendezvous rendezvous{.master_addr = master.place.node_ip,
                        .restart_count = restart_count,
                        .max_restarts = options_.max_restarts,
                        .run_id = run_id_,
                        .threads_per_worker = options_.cpus_per_worker,
                        .uses_gpus = options_.gpus_per_worker > 0};
  try {
    rendezvous.master_port = await(master.actor.task(&RankWorker::free_port).remote(), kWorkerAnswerLimit, "its actor");
  } catch (const Error& e) {
    throw AttemptFailed{"rank 0 on " + where(master) + " found no free port: " + e.what()};
  }

  std::vector<ObjectRef<void>> starts;
  for (Worker& w : workers) {
    ProgramSpec spec{program_, options_.command, launcher_environment(w.rank, layout, rendezvous, options_.env),
                     working_dir_};
    starts.push_back(w.actor.task(&RankWorker::start).remote(spec));
  }
  for (size_t i = 0; i < workers.size(); ++i) {
    try {
      await(starts[i], kWorkerAnswerLimit, "its actor");
    } catch (const TaskError& e) {
      throw AttemptFailed{rank_name(workers[i]) + " on " + where(workers[i]) +
                          " could not start: " + e.remote_message()};
    } catch (const Error& e) {
      throw AttemptFailed{rank_name(workers[i]) + " on " + where(workers[i]) + " could not start: " + e.what()};
    }
  }
  transition(State::kRunning, std::to_string(layout.world_size) + " rank(s) on " + std::to_string(layout.num_nodes) +
                                  " node(s), MASTER_ADDR=" + rendezvous.master_addr +
                                  " MASTER_PORT=" + std::to_string(rendezvous.master_port) +
                                  " TORCHELASTIC_RESTART_COUNT=" + std::to_string(restart_count));
}

Launcher::Outcome Launcher::monitor(std::vector<Worker>& workers) {
  while (true) {
    check_stop();
    std::vector<AnyObjectRef> refs;
    std::vector<size_t> owners;
    for (size_t i = 0; i < workers.size(); ++i) {
      Worker& w = workers[i];
      if (w.finished) continue;
      if (!w.pending_poll) w.pending_poll = w.actor.task(&RankWorker::poll).remote(kPollWaitMs);
      refs.emplace_back(*w.pending_poll);
      owners.push_back(i);
    }
    if (refs.empty()) return {State::kSucceeded, {}};
    WaitIndices ready = gantry::wait(refs, 1, kTick);
    for (size_t r : ready.ready) {
      size_t i = owners[r];
      Worker& w = workers[i];
      RankProgress progress;
      try {
        progress = w.pending_poll->get();
      } catch (const Error& e) {
        w.pending_poll.reset();
        w.finished = true;
        return {State::kFailed, rank_name(w) + "'s worker on " + where(w) + " died: " + e.what()};
      }
      w.pending_poll.reset();
      print_lines(w, i, progress.lines);
      if (!progress.exited) continue;
      w.finished = true;
      ExitStatus status = progress.status();
      if (!status.success()) return {State::kFailed, rank_name(w) + " on " + where(w) + " " + status.describe()};
    }
  }
}

void Launcher::tear_down(std::vector<Worker>& workers, const PlacementGroup& group) {
  std::vector<std::optional<ObjectRef<RankProgress>>> stops(workers.size());
  for (size_t i = 0; i < workers.size(); ++i) {
    if (workers[i].actor.id().is_nil()) continue;
    try {
      stops[i] = workers[i].actor.task(&RankWorker::stop).remote(kTerminateGraceMs);
    } catch (const Error&) {
    }
  }
  // Lines a poll in flight already took come before those stop hands over.
  auto limit = milliseconds(kTerminateGraceMs) + seconds(5);
  for (size_t i = 0; i < workers.size(); ++i) {
    Worker& w = workers[i];
    for (auto* ref : {&w.pending_poll, &stops[i]}) {
      if (!*ref) continue;
      try {
        print_lines(w, i, (*ref)->get(limit).lines);
      } catch (const Error&) {
        // A dead worker has nothing more to say; one that does not answer is killed below.
      }
      ref->reset();
    }
  }
  for (Worker& w : workers) {
    if (w.actor.id().is_nil()) continue;
    try {
      gantry::kill(w.actor);
    } catch (const Error&) {
    }
  }
  try {
    remove_placement_group(group);
  } catch (const Error&) {
  }
}

}  // namespace gantry::train::launch
