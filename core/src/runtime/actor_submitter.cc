#include "runtime/actor_submitter.h"

#include <algorithm>

#include "common/logging.h"

namespace gantry::internal {

struct ActorSubmitter::ResolveCall {
  grpc::ClientContext ctx;
  proto::GetActorRequest request;
  proto::GetActorReply reply;
};

ActorSubmitter::ActorSubmitter(ActorSubmitterConfig config) : config_(std::move(config)) {}

ActorSubmitter::~ActorSubmitter() { stop(); }

void ActorSubmitter::set_max_task_retries(const ActorId& actor, int max_task_retries) {
  std::lock_guard<std::mutex> lock(mu_);
  ActorState& st = actors_[actor];
  st.id = actor;
  st.max_task_retries = max_task_retries;
}

void ActorSubmitter::submit(const ActorId& actor, proto::TaskSpec spec, std::vector<ObjectId> arg_refs) {
  config_.refs->add_submitted(arg_refs);
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ActorState& st = actors_[actor];
    st.id = actor;
    Call call;
    spec.set_sequence(st.next_sequence++);
    call.spec = std::move(spec);
    call.arg_refs = std::move(arg_refs);
    call.retries_left = st.max_task_retries;
    if (st.dead || stopping_) {
      fail_call(call, st.death, after);
    } else {
      st.queue.push_back(std::move(call));
      if (st.stream) flush_locked(st, after);
      else if (!st.resolving) resolve_locked(st, after);
    }
  }
  finish(after);
}

void ActorSubmitter::flush_locked(ActorState& st, AfterUnlock& after) {
  while (!st.queue.empty()) {
    Call call = std::move(st.queue.front());
    st.queue.pop_front();
    // Ready owned arguments travel with the call; pending ones stay references, which
    // the actor resolves in call order.
    for (auto& arg : *call.spec.mutable_args()) {
      if (!arg.has_ref() || arg.ref().owner_address() != config_.self_address) continue;
      if (ValuePtr value = config_.store->get_if_ready(ObjectId::from_binary(arg.ref().id())))
        inline_ready_value(arg, *value, config_.inline_threshold);
    }
    uint64_t seq = call.spec.sequence();
    st.seq_of[TaskId::from_binary(call.spec.task_id())] = seq;
    st.stream->enqueue(call.spec);
    st.in_flight.emplace(seq, std::move(call));
  }
  if (after.flush.empty() || after.flush.back() != st.stream) after.flush.push_back(st.stream);
}

void ActorSubmitter::resolve_locked(ActorState& st, AfterUnlock& after) {
  st.resolving = true;
  auto call = std::make_shared<ResolveCall>();
  call->request.set_actor_id(st.id.binary());
  call->request.set_wait(true);
  call->request.set_known_address(st.last_address);
  call->request.set_timeout_ms(-1);
  resolve_calls_.emplace(call.get(), call);
  ActorId id = st.id;
  after.calls.push_back([this, call, id] {
    config_.head->async()->GetActor(&call->ctx, &call->request, &call->reply, [this, call, id](grpc::Status s) {
      on_resolved(id, s, call->reply);
      std::lock_guard<std::mutex> lock(mu_);
      resolve_calls_.erase(call.get());
      cv_.notify_all();
    });
  });
}

void ActorSubmitter::fail_call(Call& call, const proto::ErrorInfo& error, AfterUnlock& after) {
  auto value = std::make_shared<proto::ObjectValue>();
  proto::ErrorInfo e = error;
  if (e.message().empty()) e = make_error(proto::ErrorInfo::ACTOR_DIED, "the actor is dead");
  if (e.kind() != proto::ErrorInfo::INFEASIBLE) e.set_kind(proto::ErrorInfo::ACTOR_DIED);
  e.set_function(call.spec.function());
  *value->mutable_error() = std::move(e);
  after.done.push_back({ObjectId::from_binary(call.spec.return_id()), std::move(value), std::move(call.arg_refs)});
}

void ActorSubmitter::discard_call(Call& call, ValuePtr value, AfterUnlock& after) {
  after.discarded.push_back({ObjectId::from_binary(call.spec.return_id()), std::move(value), std::move(call.arg_refs)});
}

CancelOutcome ActorSubmitter::cancel(const TaskId& id, bool force, std::string* notify_worker) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string raw = id.binary();
    auto cancelled_value = [](const Call& call, const std::string& how) {
      auto value = std::make_shared<proto::ObjectValue>();
      *value->mutable_error() = make_error(
          proto::ErrorInfo::TASK_CANCELLED,
          "actor call " + call.spec.function() + " was cancelled (gantry::cancel) " + how, call.spec.function());
      return value;
    };
    bool found = false;
    for (auto& [actor, st] : actors_) {
      auto q = std::find_if(st.queue.begin(), st.queue.end(), [&](const Call& c) { return c.spec.task_id() == raw; });
      if (q != st.queue.end()) {
        if (force) return CancelOutcome::kForceRefused;
        // Not sent yet (the actor is not reachable yet): it never runs.
        ++st.counts[q->spec.function()].second;
        after.done.push_back({ObjectId::from_binary(q->spec.return_id()), cancelled_value(*q, "before it was sent"),
                              std::move(q->arg_refs)});
        st.queue.erase(q);
        found = true;
        break;
      }
      auto s = st.seq_of.find(id);
      if (s == st.seq_of.end()) continue;
      auto it = st.in_flight.find(s->second);
      if (it == st.in_flight.end()) continue;
      if (force) return CancelOutcome::kForceRefused;
      found = true;
      Call& call = it->second;
      if (call.cancelled) break;
      // Running, or queued in the actor's worker: the worker skips it or tells it.
      call.cancelled = true;
      ++st.counts[call.spec.function()].second;
      after.done.push_back(
          {ObjectId::from_binary(call.spec.return_id()), cancelled_value(call, "after it was sent to the actor"), {}});
      *notify_worker = st.address;
      break;
    }
    if (!found) return CancelOutcome::kNotFound;
  }
  finish(after);
  return CancelOutcome::kCancelled;
}

void ActorSubmitter::on_resolved(const ActorId& id, const grpc::Status& status, const proto::GetActorReply& reply) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ActorState& st = actors_[id];
    st.resolving = false;
    if (stopping_) return;
    if (!status.ok() || !reply.found() || reply.info().state() == proto::ActorInfo::DEAD) {
      st.dead = true;
      if (!status.ok())
        st.death = make_error(proto::ErrorInfo::ACTOR_DIED, "cannot reach the head to find the actor: " +
                                                                status.error_message());
      else if (!reply.found())
        st.death = make_error(proto::ErrorInfo::ACTOR_DIED, "actor " + id.hex() + " is unknown to the head");
      else
        st.death = reply.info().death_cause();
      while (!st.queue.empty()) {
        fail_call(st.queue.front(), st.death, after);
        st.queue.pop_front();
      }
    } else {
      st.address = reply.info().address();
      st.max_task_retries = reply.info().max_task_retries();
      uint64_t gen = ++st.generation;
      st.stream = std::make_shared<TaskStream>(
          connect_task_transport(*config_.channels, st.address, reply.info().task_address(),
                                 config_.force_grpc_streams),
          [this, id, gen](proto::ResultBatch& batch) { on_results(id, gen, batch); },
          [this, id, gen](const std::string& why) { on_broken(id, gen, why); });
      flush_locked(st, after);
    }
  }
  finish(after);
}

void ActorSubmitter::on_results(const ActorId& id, uint64_t generation, proto::ResultBatch& batch) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ActorState& st = actors_[id];
    for (auto& result : *batch.mutable_results()) {
      auto s = st.seq_of.find(TaskId::from_binary(result.task_id()));
      if (s == st.seq_of.end()) continue;
      auto it = st.in_flight.find(s->second);
      st.seq_of.erase(s);
      if (it == st.in_flight.end()) continue;
      if (it->second.cancelled) {
        auto dropped = std::make_shared<proto::ObjectValue>();
        dropped->Swap(result.mutable_value());
        discard_call(it->second, std::move(dropped), after);
        st.in_flight.erase(it);
        continue;
      }
      auto& count = st.counts[it->second.spec.function()];
      ++(result.value().has_error() ? count.second : count.first);
      auto value = std::make_shared<proto::ObjectValue>();
      value->Swap(result.mutable_value());
      after.done.push_back({ObjectId::from_binary(it->second.spec.return_id()), std::move(value),
                            std::move(it->second.arg_refs)});
      st.in_flight.erase(it);
    }
  }
  finish(after);
}

void ActorSubmitter::on_broken(const ActorId& id, uint64_t generation, const std::string& why) {
  AfterUnlock after;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ActorState& st = actors_[id];
    if (stopping_ || st.generation != generation) return;
    st.last_address = st.address;
    st.address.clear();
    retired_.push_back(std::move(st.stream));
    st.stream.reset();
    // Calls that may have run: retried ahead of newer calls if allowed, in order.
    std::deque<Call> retry;
    for (auto& [seq, call] : st.in_flight) {
      st.seq_of.erase(TaskId::from_binary(call.spec.task_id()));
      if (call.cancelled) {
        discard_call(call, nullptr, after);
      } else if (call.retries_left != 0) {
        if (call.retries_left > 0) --call.retries_left;
        call.spec.set_attempt(call.spec.attempt() + 1);
        retry.push_back(std::move(call));
      } else {
        fail_call(call,
                  make_error(proto::ErrorInfo::ACTOR_DIED,
                             "the actor's process died while running " + call.spec.function() + " (" + why +
                                 "); the call was not retried (max_task_retries = " +
                                 std::to_string(st.max_task_retries) + ")"),
                  after);
      }
    }
    st.in_flight.clear();
    for (auto it = retry.rbegin(); it != retry.rend(); ++it) st.queue.push_front(std::move(*it));
    resolve_locked(st, after);
  }
  finish(after);
}

void ActorSubmitter::finish(AfterUnlock& after) {
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
  std::vector<std::shared_ptr<TaskStream>> retired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    retired.swap(retired_);
  }
  // A stream retired by its own reader thread cannot be joined here; hand it to a
  // detached thread that can.
  for (auto& s : retired) std::thread([s = std::move(s)]() mutable { s.reset(); }).detach();
}

void ActorSubmitter::stop() {
  std::vector<std::shared_ptr<TaskStream>> streams;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, st] : actors_)
      if (st.stream) streams.push_back(st.stream);
    for (auto& [ptr, call] : resolve_calls_) call->ctx.TryCancel();
    cv_.wait_for(lock, std::chrono::seconds(3), [this] { return resolve_calls_.empty(); });
  }
  for (auto& s : streams) s->cancel();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, st] : actors_) st.stream.reset();
  }
  streams.clear();
}

void ActorSubmitter::describe(size_t limit, proto::OwnedState* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, std::pair<int64_t, int64_t>> counts;
  auto add = [&](const ActorState& st, const Call& call, const char* state) {
    if (static_cast<size_t>(out->tasks_size()) >= limit) {
      out->set_truncated(true);
      return;
    }
    proto::TaskStateInfo* t = out->add_tasks();
    t->set_task_id(call.spec.task_id());
    t->set_name(call.spec.function());
    t->set_state(state);
    t->set_actor_id(st.id.binary());
    if (*state == 'S') t->set_worker_address(st.address);
  };
  for (const auto& [id, st] : actors_) {
    for (const auto& [seq, call] : st.in_flight) add(st, call, "SUBMITTED");
    for (const Call& call : st.queue) add(st, call, "PENDING_ACTOR");
    for (const auto& [method, c] : st.counts) {
      counts[method].first += c.first;
      counts[method].second += c.second;
    }
  }
  for (const auto& [method, c] : counts) {
    proto::TaskCount* tc = out->add_counts();
    tc->set_name(method);
    tc->set_finished(c.first);
    tc->set_failed(c.second);
  }
}

}  // namespace gantry::internal
