#include "runtime/task_event_log.h"

#include <algorithm>
#include <chrono>

namespace gantry::internal {

TaskEventLog::TaskEventLog(size_t capacity, size_t failures_kept)
    : capacity_(std::max<size_t>(capacity, 1)), failures_kept_(std::max<size_t>(failures_kept, 1)) {}

uint64_t TaskEventLog::now_us() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

uint64_t TaskEventLog::started(const TaskId& id, const std::string& name, int attempt, bool actor_call) {
  Execution e{id, name, now_us(), 0, attempt, false, actor_call};
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t token = next_token_++;
  ++counts_[e.name].running;
  if (actor_call) ++actor_calls_.running;
  running_.emplace(token, std::move(e));
  return token;
}

void TaskEventLog::ended(uint64_t token, const proto::ErrorInfo* error) {
  uint64_t end = now_us();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = running_.find(token);
  if (it == running_.end()) return;
  Execution e = std::move(it->second);
  running_.erase(it);
  e.end_us = end;
  e.failed = error != nullptr;
  counts_[e.name].end(e.failed);
  if (e.actor_call) actor_calls_.end(e.failed);
  if (error != nullptr) {
    proto::TaskFailure f;
    f.set_task_id(e.id.binary());
    f.set_name(e.name);
    f.set_time_us(end);
    f.set_error_type(error->remote_type().empty() ? proto::ErrorInfo::Kind_Name(error->kind()) : error->remote_type());
    // Keep a failure small: a huge what() must not bloat every dashboard poll.
    f.set_message(error->message().substr(0, 4096));
    if (failures_.size() < failures_kept_) {
      failures_.push_back(std::move(f));
    } else {
      failures_[failures_next_] = std::move(f);
    }
    failures_next_ = (failures_next_ + 1) % failures_kept_;
  }
  if (ended_.size() < capacity_) {
    ended_.push_back(std::move(e));
  } else {
    ended_[ended_next_] = std::move(e);
  }
  ended_next_ = (ended_next_ + 1) % capacity_;
  ++ended_total_;
}

void TaskEventLog::describe(const proto::TaskEventsRequest& req, proto::TaskEvents* out) const {
  auto put = [](const Execution& e, proto::TaskExecution* x) {
    x->set_task_id(e.id.binary());
    x->set_name(e.name);
    x->set_start_us(e.start_us);
    x->set_end_us(e.end_us);
    x->set_failed(e.failed);
    x->set_attempt(e.attempt);
  };
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, c] : counts_) {
    proto::ExecutedCount* n = out->add_counts();
    n->set_name(name);
    n->set_running(c.running);
    n->set_finished(c.finished);
    n->set_failed(c.failed);
  }
  out->mutable_actor_calls()->set_running(actor_calls_.running);
  out->mutable_actor_calls()->set_finished(actor_calls_.finished);
  out->mutable_actor_calls()->set_failed(actor_calls_.failed);
  size_t limit = req.limit() > 0 ? static_cast<size_t>(req.limit()) : 0;
  size_t added = 0;
  for (const auto& [token, e] : running_) {
    if (added >= limit) break;
    put(e, out->add_executions());
    ++added;
  }
  // Newest first: walk the ring backwards from the slot written last.
  for (size_t k = 0; k < ended_.size() && added < limit; ++k) {
    const Execution& e = ended_[(ended_next_ + ended_.size() - 1 - k) % ended_.size()];
    if (e.end_us <= req.since_us()) break;
    put(e, out->add_executions());
    ++added;
  }
  out->set_executions_dropped(ended_total_ - ended_.size());
  for (size_t k = 0; k < failures_.size(); ++k)
    *out->add_failures() = failures_[(failures_next_ + failures_.size() - 1 - k) % failures_.size()];
}

}  // namespace gantry::internal
