#include "runtime/task_submitter.h"

#include <algorithm>

#include "common/logging.h"

namespace gantry::internal {
namespace {

// Tasks kept in flight per worker: enough to cover this much execution time.
constexpr double kPipelineTargetUs = 2000;
constexpr size_t kMaxPipelineDepth = 256;
// A worker with tasks queued behind a running one that has shown no progress for this
// long (and for several times its function's usual time) gives the queued ones back.
constexpr auto kStealAfter = std::chrono::milliseconds(50);
// How often the housekeeper looks for stragglers to steal from and idle leases to return
// while any worker is leased, and how long it sleeps when none is.
constexpr auto kHousekeepingPeriod = std::chrono::milliseconds(10);
constexpr auto kIdleHousekeepingPeriod = std::chrono::seconds(1);

}  // namespace

struct TaskSubmitter::LeaseCall {
  grpc::ClientContext ctx;
  proto::LeaseRequest request;
  proto::LeaseReply reply;
};

TaskSubmitter::TaskSubmitter(SubmitterConfig config) : config_(std::move(config)) {
  housekeeper_ = std::thread([this] { housekeeping_loop(); });
}

TaskSubmitter::~TaskSubmitter() { stop(); }

size_t TaskSubmitter::num_tasks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tasks_.size();
}

void TaskSubmitter::describe(size_t limit, proto::OwnedState* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto name_of = [](const proto::TaskSpec& spec) { return spec.name().empty() ? spec.function() : spec.name(); };
  std::unordered_set<TaskId> seen;
  auto add = [&](const TaskId& id, const char* state, const LeasedWorker* w) {
    auto it = tasks_.find(id);
    if (it == tasks_.end() || !seen.insert(id).second) return;
    if (static_cast<size_t>(out->tasks_size()) >= limit) {
      out->set_truncated(true);
      return;
    }
    proto::TaskStateInfo* t = out->add_tasks();
    t->set_task_id(id.binary());
    t->set_name(name_of(it->second->spec));
    t->set_state(state);
    if (w != nullptr) {
      t->set_worker_address(w->address);
      t->set_worker_pid(w->pid);
    }
  };
  std::map<std::string, std::pair<int64_t, int64_t>> counts;
  for (const auto& [key, ks] : keys_) {
    for (const auto& [handle, w] : ks.workers)
      for (const TaskId& id : w->in_flight) add(id, "SUBMITTED", w.get());
    for (const TaskId& id : ks.queue) add(id, "PENDING_WORKER", nullptr);
    for (const auto& [function, stats] : ks.functions) {
      counts[function].first += stats.finished;
      counts[function].second += stats.failed;
    }
  }
  for (const auto& [id, task] : tasks_) add(id, "PENDING_ARGS", nullptr);
  for (const auto& [name, c] : counts) {
    proto::TaskCount* tc = out->add_counts();
    tc->set_name(name);
    tc->set_finished(c.first);
    tc->set_failed(c.second);
  }
}

void TaskSubmitter::submit(proto::TaskSpec spec, std::vector<ObjectId> arg_refs, ResourceSet resources,
                           proto::SchedulingStrategy strategy, int max_retries, bool retry_exceptions) {
  TaskId id = TaskId::from_binary(spec.task_id());
  config_.refs->add_submitted(arg_refs);
  // Owned arguments still being computed: the task waits here, not on a worker, so a
  // chain of tasks never holds workers idle.
  std::vector<ObjectId> pending;
  for (const auto& arg : spec.args()) {
    if (!arg.has_ref() || arg.ref().owner_address() != config_.self_address) continue;
    ObjectId dep = ObjectId::from_binary(arg.ref().id());
    if (config_.store->contains(dep) && !config_.store->get_if_ready(dep)) pending.push_back(dep);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto task = std::make_unique<Task>();
    // Leases serve one shape: resources and where they may be.
    task->key = resources.to_string();
    if (strategy.kind() == proto::SchedulingStrategy::PLACEMENT_GROUP)
      task->key += " pg:" + UniqueId::from_binary(strategy.placement_group_id()).hex() + "/" +
                   std::to_string(strategy.bundle_index());
    else if (strategy.kind() != proto::SchedulingStrategy::DEFAULT)
      task->key += " " + std::to_string(strategy.kind()) + ":" + UniqueId::from_binary(strategy.node_id()).hex() +
                   (strategy.soft() ? "~" : "");
    task->retries_left = max_retries;
    task->retry_exceptions = retry_exceptions;
    task->unresolved = static_cast<int>(pending.size()) + 1;  // +1 released below
    task->arg_refs = std::move(arg_refs);
    spec.set_sequence(next_sequence_++);
    auto [it, inserted] = keys_.try_emplace(task->key);
    if (inserted) {
      it->second.key = task->key;
      it->second.resources = std::move(resources);
      it->second.description = "task " + spec.function();
      it->second.strategy = std::move(strategy);
    }
    task->spec = std::move(spec);
    tasks_.emplace(id, std::move(task));
  }
  for (const auto& dep : pending)
    if (!config_.store->on_ready(dep, [this, id](const ValuePtr&) { on_dependency_ready(id); }))
      on_dependency_ready(id);
  on_dependency_ready(id);
}

void TaskSubmitter::on_dependency_ready(const TaskId& id) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tasks_.find(id);
    if (it == tasks_.end() || --it->second->unresolved > 0 || stopping_) return;
    KeyState& ks = keys_[it->second->key];
    ks.queue.push_back(id);
    dispatch_locked(ks, after);
  }
  finish(after);
}

size_t TaskSubmitter::pipeline_depth_locked(const KeyState& ks, const std::string& function) const {
  auto stats = ks.functions.find(function);
  if (stats == ks.functions.end() || stats->second.avg_us < 0 || ks.strategy.kind() == proto::SchedulingStrategy::SPREAD)
    return 1;
  double depth = kPipelineTargetUs / std::max(stats->second.avg_us, 1.0);
  return static_cast<size_t>(std::clamp(depth, 1.0, static_cast<double>(kMaxPipelineDepth)));
}

bool TaskSubmitter::resolve_args_locked(Task& task, AfterUnlock& after) {
  for (auto& arg : *task.spec.mutable_args()) {
    if (!arg.has_ref() || arg.ref().owner_address() != config_.self_address) continue;
    ValuePtr value = config_.store->get_if_ready(ObjectId::from_binary(arg.ref().id()));
    if (!value) continue;  // the worker asks us, and learns it is lost
    if (value->has_error()) {
      // A failed argument fails the task with the same error, without running it.
      fail_task_locked(TaskId::from_binary(task.spec.task_id()), value->error(), after);
      return false;
    }
    inline_ready_value(arg, *value, config_.inline_threshold);
  }
  return true;
}

void TaskSubmitter::dispatch_locked(KeyState& ks, AfterUnlock& after) {
  while (!ks.queue.empty()) {
    auto front = tasks_.find(ks.queue.front());
    if (front == tasks_.end()) {
      ks.queue.pop_front();
      continue;
    }
    size_t depth = pipeline_depth_locked(ks, front->second->spec.function());
    LeasedWorker* best = nullptr;
    for (auto& [lease, w] : ks.workers) {
      if (w->stalled && !w->in_flight.empty()) continue;  // stuck: nothing more behind it
      if (w->in_flight.size() < depth && (best == nullptr || w->in_flight.size() < best->in_flight.size()))
        best = w.get();
    }
    if (best == nullptr) break;
    TaskId id = front->first;
    Task& task = *front->second;
    ks.queue.pop_front();
    if (!resolve_args_locked(task, after)) continue;
    if (best->in_flight.empty()) {
      best->progress_at = std::chrono::steady_clock::now();
      best->stalled = false;
    }
    best->in_flight.insert(id);
    best->stream->enqueue(task.spec);
    if (after.flush.empty() || after.flush.back() != best->stream) after.flush.push_back(best->stream);
  }
  if (!ks.queue.empty() && ks.pending_lease_requests == 0) request_lease_locked(ks, after);
}

proto::NodeAgent::Stub* TaskSubmitter::agent_at_locked(const std::string& address) {
  auto& stub = agents_[address];
  if (!stub) stub = proto::NodeAgent::NewStub(config_.channels->get(address));
  return stub.get();
}

void TaskSubmitter::request_lease_locked(KeyState& ks, AfterUnlock& after, proto::NodeAgent::Stub* agent,
                                        const std::string& spilled_to, const std::string& unreachable) {
  if (agent == nullptr) agent = config_.agent.get();
  ++ks.pending_lease_requests;
  ++calls_in_flight_;
  auto call = std::make_shared<LeaseCall>();
  *call->request.mutable_resources() = to_proto(ks.resources);
  call->request.set_owner_address(config_.self_address);
  call->request.set_job_id(config_.job_id);
  call->request.set_description(ks.description);
  *call->request.mutable_strategy() = ks.strategy;
  call->request.set_spilled(!spilled_to.empty());
  call->request.set_unreachable_node_id(unreachable);
  lease_calls_.emplace(call.get(), call);
  std::string key = ks.key;
  after.calls.push_back([this, call, key, agent, spilled_to] {
    agent->async()->RequestLease(&call->ctx, &call->request, &call->reply,
                                 [this, call, key, agent, spilled_to](grpc::Status s) {
      on_lease(key, agent, spilled_to, s, call->reply);
      std::lock_guard<std::mutex> lock(mu_);
      lease_calls_.erase(call.get());
      --calls_in_flight_;
      cv_.notify_all();
    });
  });
}

void TaskSubmitter::on_lease(const std::string& key, proto::NodeAgent::Stub* agent,
                             const std::string& spilled_to, const grpc::Status& status,
                             const proto::LeaseReply& reply) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KeyState& ks = keys_[key];
    --ks.pending_lease_requests;
    bool granted = status.ok() && reply.granted();
    if (stopping_ || (granted && ks.queue.empty())) {
      if (granted) {
        uint64_t lease = reply.lease_id();
        after.calls.push_back([this, agent, lease] { return_lease(agent, lease, false); });
      }
    } else if (status.ok() && !reply.spillback_address().empty() && !reply.has_error()) {
      // This node cannot take it now but another can: ask that node's agent.
      GANTRY_LOG_DEBUG("{} spills to node {} at {}", ks.description,
                       UniqueId::from_binary(reply.spillback_node_id()).short_hex(), reply.spillback_address());
      request_lease_locked(ks, after, agent_at_locked(reply.spillback_address()), reply.spillback_node_id());
    } else if (status.ok() && reply.job_refused() && !spilled_to.empty()) {
      // The node we were sent to cannot run this job's program; another may, or this one
      // once it has room. Should nothing else ever hold it, that node's reason is the error.
      GANTRY_LOG_INFO("{}: node {} cannot run it ({}); placing it again without that node", ks.description,
                      UniqueId::from_binary(spilled_to).short_hex(), reply.error().message());
      ks.refusal = reply.error().message();
      request_lease_locked(ks, after, nullptr, {}, spilled_to);
    } else if (!status.ok() && !spilled_to.empty() && status.error_code() != grpc::StatusCode::CANCELLED) {
      // The node we were sent to is gone (its death not noticed yet): place it again.
      GANTRY_LOG_INFO("{}: node {} did not answer ({}); placing it again", ks.description,
                      UniqueId::from_binary(spilled_to).short_hex(), status.error_message());
      request_lease_locked(ks, after, nullptr, {}, spilled_to);
    } else if (!status.ok()) {
      fail_queue_locked(ks,
                        make_error(proto::ErrorInfo::INTERNAL,
                                   "cannot lease a worker from the node agent: " + status.error_message()),
                        after);
    } else if (reply.has_error()) {
      proto::ErrorInfo error = reply.error();
      if (error.kind() == proto::ErrorInfo::INFEASIBLE && !ks.refusal.empty())
        error.set_message(error.message() + "; a node that could hold it refused: " + ks.refusal);
      fail_queue_locked(ks, error, after);
    } else {
      ks.refusal.clear();  // placed: an old refusal says nothing about later requests
      auto w = std::make_unique<LeasedWorker>();
      w->lease_id = reply.lease_id();
      w->agent = agent;
      w->address = reply.worker_address();
      w->pid = reply.worker_pid();
      w->idle_since = std::chrono::steady_clock::now();
      uint64_t handle = next_handle_++;
      w->stream = std::make_shared<TaskStream>(
          connect_task_transport(*config_.channels, w->address, reply.task_address(), config_.force_grpc_streams),
          [this, key, handle](proto::ResultBatch& batch) { on_results(key, handle, batch); },
          [this, key, handle](const std::string& why) { on_broken(key, handle, why); });
      ks.workers.emplace(handle, std::move(w));
      dispatch_locked(ks, after);
    }
  }
  finish(after);
}

void TaskSubmitter::on_results(const std::string& key, uint64_t handle, proto::ResultBatch& batch) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    KeyState& ks = keys_[key];
    auto wit = ks.workers.find(handle);
    LeasedWorker* w = wit == ks.workers.end() ? nullptr : wit->second.get();
    if (w != nullptr) {
      w->progress_at = std::chrono::steady_clock::now();
      w->stalled = false;
    }
    for (auto& result : *batch.mutable_results()) {
      // Given back by a steal: it was queued again already and may be running elsewhere.
      if (result.stolen()) continue;
      TaskId id = TaskId::from_binary(result.task_id());
      if (w != nullptr) w->in_flight.erase(id);
      auto it = tasks_.find(id);
      if (it == tasks_.end()) continue;
      Task& task = *it->second;
      double us = static_cast<double>(result.exec_us());
      KeyState::FunctionStats& stats = ks.functions[task.spec.function()];
      stats.avg_us = stats.avg_us < 0 ? us : 0.8 * stats.avg_us + 0.2 * us;
      if (task.cancelled) {
        auto dropped = std::make_shared<proto::ObjectValue>();
        dropped->Swap(result.mutable_value());
        discard_task_locked(it, std::move(dropped), after);
        continue;
      }
      const proto::ObjectValue& value = result.value();
      if (value.has_error() && value.error().kind() == proto::ErrorInfo::TASK_ERROR && task.retry_exceptions &&
          task.retries_left != 0) {
        if (task.retries_left > 0) --task.retries_left;
        task.spec.set_attempt(task.spec.attempt() + 1);
        ks.queue.push_front(id);
        continue;
      }
      if (value.has_shm() && task.arg_refs.empty() && config_.keep_lineage) {
        bool self_contained = true;
        for (const auto& arg : task.spec.args()) self_contained &= arg.has_inline_data();
        if (self_contained) config_.keep_lineage(task.spec, ks.resources, ks.strategy, task.retries_left);
      }
      ++(value.has_error() ? stats.failed : stats.finished);
      auto stored = std::make_shared<proto::ObjectValue>();
      stored->Swap(result.mutable_value());
      after.done.push_back({ObjectId::from_binary(task.spec.return_id()), std::move(stored), std::move(task.arg_refs)});
      tasks_.erase(it);
    }
    // A spread task's lease serves that task only: the next one is placed afresh.
    if (w != nullptr && w->in_flight.empty() && ks.strategy.kind() == proto::SchedulingStrategy::SPREAD) {
      drop_worker_locked(ks, handle, false, after);
      w = nullptr;
    }
    if (!stopping_) dispatch_locked(ks, after);
    if (w != nullptr && w->in_flight.empty()) w->idle_since = std::chrono::steady_clock::now();
  }
  finish(after);
}

void TaskSubmitter::on_broken(const std::string& key, uint64_t handle, const std::string& why) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    KeyState& ks = keys_[key];
    auto wit = ks.workers.find(handle);
    if (wit == ks.workers.end()) return;
    LeasedWorker& w = *wit->second;
    // Re-run in submission order ahead of newer work.
    std::vector<TaskId> lost = in_submission_order_locked(w.in_flight);
    for (auto rit = lost.rbegin(); rit != lost.rend(); ++rit) {
      auto it = tasks_.find(*rit);
      if (it == tasks_.end()) continue;
      Task& task = *it->second;
      if (task.cancelled) {
        discard_task_locked(it, nullptr, after);
      } else if (task.retries_left != 0) {
        if (task.retries_left > 0) --task.retries_left;
        task.spec.set_attempt(task.spec.attempt() + 1);
        GANTRY_LOG_INFO("worker pid {} died running {}; retrying (attempt {})", w.pid, task.spec.function(),
                        task.spec.attempt() + 1);
        ks.queue.push_front(*rit);
      } else {
        fail_task_locked(*rit,
                         make_error(proto::ErrorInfo::WORKER_CRASHED,
                                    "the worker process (pid " + std::to_string(w.pid) + ") running " +
                                        (task.spec.name().empty() ? task.spec.function() : task.spec.name()) + " died before finishing it (" + why + "), after " +
                                        std::to_string(task.spec.attempt() + 1) + " attempt(s); raise max_retries "
                                        "to retry more often",
                                    task.spec.name().empty() ? task.spec.function() : task.spec.name()),
                         after);
      }
    }
    w.in_flight.clear();
    drop_worker_locked(ks, handle, true, after);
    dispatch_locked(ks, after);
  }
  finish(after);
}

std::vector<TaskId> TaskSubmitter::in_submission_order_locked(const std::unordered_set<TaskId>& ids) const {
  std::vector<TaskId> out(ids.begin(), ids.end());
  auto sequence = [&](const TaskId& id) {
    auto it = tasks_.find(id);
    return it == tasks_.end() ? uint64_t{0} : it->second->spec.sequence();
  };
  std::sort(out.begin(), out.end(), [&](const TaskId& a, const TaskId& b) { return sequence(a) < sequence(b); });
  return out;
}

void TaskSubmitter::discard_task_locked(std::unordered_map<TaskId, std::unique_ptr<Task>>::iterator it, ValuePtr value,
                                        AfterUnlock& after) {
  Task& task = *it->second;
  after.discarded.push_back({ObjectId::from_binary(task.spec.return_id()), std::move(value), std::move(task.arg_refs)});
  tasks_.erase(it);
}

CancelOutcome TaskSubmitter::cancel(const TaskId& id, bool force, std::string* notify_worker) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tasks_.find(id);
    if (it == tasks_.end()) return CancelOutcome::kNotFound;
    Task& task = *it->second;
    if (task.cancelled) return CancelOutcome::kCancelled;  // its worker was told already
    const std::string name = task.spec.name().empty() ? task.spec.function() : task.spec.name();
    KeyState& ks = keys_[task.key];
    uint64_t handle = 0;
    LeasedWorker* w = nullptr;
    for (auto& [h, worker] : ks.workers) {
      if (worker->in_flight.count(id) > 0) {
        handle = h;
        w = worker.get();
        break;
      }
    }
    if (w == nullptr) {
      // Waiting for its arguments or for a worker: it never runs.
      std::erase(ks.queue, id);
      fail_task_locked(id,
                       make_error(proto::ErrorInfo::TASK_CANCELLED,
                                  "task " + name + " was cancelled (gantry::cancel) before it started", name),
                       after);
    } else if (force) {
      // The other tasks sent to that worker wait behind this one (a worker runs one task
      // at a time): they go back to the queue, in order, without spending a retry.
      std::vector<TaskId> others = in_submission_order_locked(w->in_flight);
      for (auto rit = others.rbegin(); rit != others.rend(); ++rit) {
        auto other = tasks_.find(*rit);
        if (*rit == id || other == tasks_.end()) continue;
        if (other->second->cancelled)
          discard_task_locked(other, nullptr, after);
        else
          ks.queue.push_front(*rit);
      }
      w->in_flight.clear();
      fail_task_locked(
          id,
          make_error(proto::ErrorInfo::TASK_CANCELLED,
                     "task " + name + " was cancelled (gantry::cancel with force): its worker process (pid " +
                         std::to_string(w->pid) + ") was killed",
                     name),
          after);
      // Returning the lease as failed makes the agent kill the process.
      drop_worker_locked(ks, handle, /*failed=*/true, after);
      dispatch_locked(ks, after);
    } else {
      // Running, or queued in the worker: the worker skips it or tells it. The ref fails
      // now; what the task returns later is dropped.
      task.cancelled = true;
      ++ks.functions[task.spec.function()].failed;
      auto value = std::make_shared<proto::ObjectValue>();
      *value->mutable_error() = make_error(
          proto::ErrorInfo::TASK_CANCELLED,
          "task " + name + " was cancelled (gantry::cancel) after it was sent to worker pid " + std::to_string(w->pid),
          name);
      after.done.push_back({ObjectId::from_binary(task.spec.return_id()), std::move(value), {}});
      *notify_worker = w->address;
    }
  }
  finish(after);
  return CancelOutcome::kCancelled;
}

void TaskSubmitter::fail_task_locked(const TaskId& id, proto::ErrorInfo error, AfterUnlock& after) {
  auto it = tasks_.find(id);
  if (it == tasks_.end()) return;
  Task& task = *it->second;
  if (error.function().empty()) error.set_function(task.spec.function());
  auto ks = keys_.find(task.key);
  if (ks != keys_.end()) ++ks->second.functions[task.spec.function()].failed;
  auto value = std::make_shared<proto::ObjectValue>();
  *value->mutable_error() = std::move(error);
  after.done.push_back({ObjectId::from_binary(task.spec.return_id()), std::move(value), std::move(task.arg_refs)});
  tasks_.erase(it);
}

void TaskSubmitter::fail_queue_locked(KeyState& ks, const proto::ErrorInfo& error, AfterUnlock& after) {
  while (!ks.queue.empty()) {
    TaskId id = ks.queue.front();
    ks.queue.pop_front();
    fail_task_locked(id, error, after);
  }
}

void TaskSubmitter::drop_worker_locked(KeyState& ks, uint64_t handle, bool failed, AfterUnlock& after) {
  auto it = ks.workers.find(handle);
  if (it == ks.workers.end()) return;
  it->second->stream->close();
  retired_streams_.push_back(std::move(it->second->stream));
  uint64_t lease_id = it->second->lease_id;
  proto::NodeAgent::Stub* agent = it->second->agent;
  ks.workers.erase(it);
  after.calls.push_back([this, agent, lease_id, failed] { return_lease(agent, lease_id, failed); });
}

void TaskSubmitter::return_lease(proto::NodeAgent::Stub* agent, uint64_t lease_id, bool failed) {
  struct ReturnCall {
    grpc::ClientContext ctx;
    proto::ReturnLeaseRequest request;
    proto::Empty reply;
  };
  auto call = std::make_shared<ReturnCall>();
  call->request.set_lease_id(lease_id);
  call->request.set_worker_failed(failed);
  call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_in_flight_;
  }
  agent->async()->ReturnLease(&call->ctx, &call->request, &call->reply, [this, call](grpc::Status) {
    std::lock_guard<std::mutex> lock(mu_);
    --calls_in_flight_;
    cv_.notify_all();
  });
}

void TaskSubmitter::finish(AfterUnlock& after) {
  for (auto& stream : after.flush) stream->flush();
  after.flush.clear();
  for (auto& call : after.calls) call();
  for (auto& c : after.done) {
    config_.complete(c.id, std::move(c.value));
    config_.refs->remove_submitted(c.arg_refs);
  }
  for (auto& c : after.discarded) {
    if (c.value && config_.discard) config_.discard(c.id, std::move(c.value));
    config_.refs->remove_submitted(c.arg_refs);
  }
}

void TaskSubmitter::steal_locked(KeyState& ks, uint64_t handle, LeasedWorker& w, AfterUnlock& after) {
  auto call = std::make_shared<StealCall>();
  for (const TaskId& id : in_submission_order_locked(w.in_flight))
    if (auto t = tasks_.find(id); t != tasks_.end() && !t->second->cancelled) call->request.add_task_ids(id.binary());
  if (call->request.task_ids_size() == 0) return;
  w.stealing = true;
  w.stalled = true;
  ++calls_in_flight_;
  call->stub = proto::WorkerService::NewStub(config_.channels->get(w.address));
  call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::string key = ks.key;
  after.calls.push_back([this, call, key, handle] {
    call->stub->async()->StealTasks(&call->ctx, &call->request, &call->reply, [this, call, key, handle](grpc::Status s) {
      on_stolen(key, handle, s, call->reply);
    });
  });
}

void TaskSubmitter::on_stolen(const std::string& key, uint64_t handle, const grpc::Status& status,
                              const proto::StealTasksReply& reply) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --calls_in_flight_;
    cv_.notify_all();
    if (stopping_) return;
    KeyState& ks = keys_[key];
    auto wit = ks.workers.find(handle);
    if (wit == ks.workers.end()) return;
    LeasedWorker& w = *wit->second;
    w.stealing = false;
    std::vector<TaskId> back;
    if (status.ok())
      for (const std::string& bytes : reply.stolen()) {
        TaskId id = TaskId::from_binary(bytes);
        if (w.in_flight.erase(id) > 0 && tasks_.count(id)) back.push_back(id);
      }
    if (!back.empty()) {
      GANTRY_LOG_DEBUG("took {} task(s) back from worker pid {}, whose running task outlasts its usual time",
                       back.size(), w.pid);
      // Ahead of newer work, in submission order.
      for (auto it = back.rbegin(); it != back.rend(); ++it) ks.queue.push_front(*it);
      dispatch_locked(ks, after);
    }
  }
  finish(after);
}

void TaskSubmitter::housekeeping_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    // With no worker leased and no stream to join there is nothing to look at: wait long,
    // so an idle driver or worker does not wake 100 times a second. A granted lease
    // notifies cv_ (the lease call's callback in request_lease_locked), which brings the
    // short period back at once.
    bool leased = !retired_streams_.empty();
    for (const auto& [key, ks] : keys_) leased |= !ks.workers.empty();
    cv_.wait_for(lock, leased ? kHousekeepingPeriod : kIdleHousekeepingPeriod);
    if (stopping_) break;
    AfterUnlock after;
    auto now = std::chrono::steady_clock::now();
    for (auto& [key, ks] : keys_) {
      for (auto& [handle, w] : ks.workers) {
        if (w->in_flight.size() < 2 || w->stealing || now - w->progress_at < kStealAfter) continue;
        // Several times what the slowest of its functions usually takes, too.
        double usual_us = 0;
        for (const TaskId& id : w->in_flight)
          if (auto t = tasks_.find(id); t != tasks_.end())
            if (auto f = ks.functions.find(t->second->spec.function()); f != ks.functions.end())
              usual_us = std::max(usual_us, f->second.avg_us);
        if (now - w->progress_at < std::chrono::microseconds(static_cast<int64_t>(4 * usual_us))) continue;
        steal_locked(ks, handle, *w, after);
      }
      if (!ks.queue.empty()) continue;
      std::vector<uint64_t> idle;
      for (const auto& [lease, w] : ks.workers)
        if (w->in_flight.empty() && now - w->idle_since >= config_.lease_linger) idle.push_back(lease);
      for (uint64_t lease : idle) drop_worker_locked(ks, lease, false, after);
    }
    std::vector<std::shared_ptr<TaskStream>> retired;
    retired.swap(retired_streams_);
    lock.unlock();
    finish(after);
    retired.clear();  // joins stream threads, off the lock
    lock.lock();
  }
}

void TaskSubmitter::stop() {
  std::vector<std::shared_ptr<TaskStream>> streams;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [key, ks] : keys_)
      for (auto& [lease, w] : ks.workers) streams.push_back(w->stream);
    for (auto& s : retired_streams_) streams.push_back(s);
    for (auto& [ptr, call] : lease_calls_) call->ctx.TryCancel();
  }
  cv_.notify_all();
  if (housekeeper_.joinable()) housekeeper_.join();
  for (auto& s : streams) s->cancel();
  std::vector<uint64_t> leases;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(3), [this] { return calls_in_flight_ == 0; });
    for (auto& [key, ks] : keys_) {
      for (auto& [lease, w] : ks.workers) leases.push_back(lease);
      ks.workers.clear();
    }
    retired_streams_.clear();
  }
  streams.clear();
}

}  // namespace gantry::internal
