#include "runtime/task_executor.h"

#include <cxxabi.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>

#include "common/logging.h"
#include "gantry/detail/registry.h"
#include "gantry/errors.h"
#include "rpc/auth.h"
#include "rpc/grpc_util.h"
#include "runtime/core_worker.h"
#include "runtime/output_forwarder.h"

namespace gantry::internal {
namespace {

thread_local const proto::TaskSpec* t_current_task = nullptr;
thread_local const std::atomic<bool>* t_cancelled = nullptr;

constexpr int kMaxResultsPerBatch = 64;
constexpr auto kMaxResultDelay = std::chrono::milliseconds(1);
// How long a cancel for a task not (yet) seen here is remembered: the CancelTask call
// may overtake the task on its stream.
constexpr auto kRememberCancel = std::chrono::minutes(1);

/// Writes a result inline into the reply, or into shared memory when it is large.
class ResultWriter final : public detail::ResultSink {
 public:
  ResultWriter(CoreWorker& core, ObjectId id, proto::ObjectValue* out) : core_(core), id_(id), out_(out) {}

  uint8_t* reserve(size_t size) override {
    if (size < core_.inline_threshold()) {
      std::string* s = out_->mutable_inline_data();
      s->resize(size);
      return reinterpret_cast<uint8_t*>(s->data());
    }
    large_ = core_.create_object_with_id(id_, size);
    return large_->data();
  }

  /// Publishes a large result: unmaps it and returns where it lives. The owner frees it
  /// when its references are gone.
  proto::ShmLocation release_large() {
    proto::ShmLocation loc = core_.location_of(*large_);
    core_.release_writable(std::move(large_));
    return loc;
  }

  detail::WritableObject* large() { return large_.get(); }

 private:
  CoreWorker& core_;
  ObjectId id_;
  proto::ObjectValue* out_;
  std::unique_ptr<detail::WritableObject> large_;
};

struct CurrentTaskScope {
  CurrentTaskScope(const proto::TaskSpec* spec, const std::atomic<bool>* cancelled) {
    t_current_task = spec;
    t_cancelled = cancelled;
  }
  ~CurrentTaskScope() {
    t_current_task = nullptr;
    t_cancelled = nullptr;
  }
};

}  // namespace

const proto::TaskSpec* current_task() { return t_current_task; }

bool current_task_cancelled() { return t_cancelled != nullptr && t_cancelled->load(std::memory_order_relaxed); }

/// Threads that run an actor's calls when its max_concurrency is above 1: jobs start in
/// the order they are posted, up to `max_threads` at once. Threads are started as calls
/// need them and then kept. Thread-safe; `mu_` guards the queue and the counts.
class TaskExecutor::CallPool {
 public:
  explicit CallPool(int max_threads) : max_threads_(static_cast<size_t>(max_threads)) {}
  ~CallPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  CallPool(const CallPool&) = delete;
  CallPool& operator=(const CallPool&) = delete;

  void post(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
    if (idle_ >= jobs_.size() || threads_.size() >= max_threads_) {
      cv_.notify_one();
      return;
    }
    threads_.emplace_back([this] { work(); });
  }

 private:
  void work() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      ++idle_;
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (stopping_) return;
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  const size_t max_threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;  // threads waiting for a job
  bool stopping_ = false;
};

TaskExecutor::TaskExecutor(CoreWorker& core) : core_(core) {}

TaskExecutor::~TaskExecutor() = default;

bool TaskExecutor::busy() const { return running_.load() > 0; }

void TaskExecutor::cancel(const TaskId& id) {
  std::lock_guard<std::mutex> lock(cancel_mu_);
  for (const RunningTask& t : running_tasks_) {
    if (t.id == id) {
      t.cancelled->store(true, std::memory_order_relaxed);
      return;
    }
  }
  // Not running: queued here, on its way, or already finished (then it is pruned later).
  auto now = std::chrono::steady_clock::now();
  std::erase_if(cancelled_early_, [&](const auto& entry) { return now - entry.second > kRememberCancel; });
  cancelled_early_[id] = now;
}

std::vector<TaskId> TaskExecutor::steal(const std::vector<TaskId>& ids) {
  std::lock_guard<std::mutex> lock(cancel_mu_);
  auto now = std::chrono::steady_clock::now();
  std::erase_if(stolen_, [&](const auto& entry) { return now - entry.second > kRememberCancel; });
  std::vector<TaskId> out;
  for (const TaskId& id : ids) {
    if (finished_.count(id)) continue;
    bool running = false;
    for (const RunningTask& t : running_tasks_) running |= t.id == id;
    if (running) continue;
    stolen_[id] = now;
    out.push_back(id);
  }
  return out;
}

TaskExecutor::Start TaskExecutor::begin_task(const TaskId& id, std::atomic<bool>* cancelled) {
  std::lock_guard<std::mutex> lock(cancel_mu_);
  if (!stolen_.empty() && stolen_.erase(id) > 0) return Start::kStolen;
  if (!cancelled_early_.empty() && cancelled_early_.erase(id) > 0) return Start::kCancelled;
  running_tasks_.push_back({id, cancelled});
  return Start::kRun;
}

void TaskExecutor::end_task(const TaskId& id) {
  std::lock_guard<std::mutex> lock(cancel_mu_);
  if (finished_ring_.size() < kFinishedKept) {
    finished_ring_.push_back(id);
  } else {
    finished_.erase(finished_ring_[finished_next_]);
    finished_ring_[finished_next_] = id;
    finished_next_ = (finished_next_ + 1) % kFinishedKept;
  }
  finished_.insert(id);
  for (auto it = running_tasks_.begin(); it != running_tasks_.end(); ++it) {
    if (it->id == id) {
      *it = running_tasks_.back();
      running_tasks_.pop_back();
      return;
    }
  }
}

void TaskExecutor::run(const proto::TaskSpec& spec, proto::TaskResult* result, bool relabel) {
  TaskId id = TaskId::from_binary(spec.task_id());
  std::atomic<bool> cancelled{false};
  Start start = begin_task(id, &cancelled);
  if (start == Start::kStolen) {
    result->set_task_id(spec.task_id());
    result->set_stolen(true);
    return;
  }
  if (start == Start::kCancelled) {
    const std::string& label = spec.name().empty() ? spec.function() : spec.name();
    result->set_task_id(spec.task_id());
    *result->mutable_value()->mutable_error() = make_error(
        proto::ErrorInfo::TASK_CANCELLED, label + " was cancelled (gantry::cancel) before it started", label);
    return;
  }
  ++running_;
  execute(spec, result, &cancelled, relabel);
  --running_;
  end_task(id);
}

proto::ErrorInfo TaskExecutor::current_exception_error(const std::string& function) const {
  std::string type = "unknown exception";
  std::string message;
  try {
    throw;
  } catch (const std::exception& e) {
    type = detail::demangle(typeid(e).name());
    message = e.what();
  } catch (...) {
    if (std::type_info* t = abi::__cxa_current_exception_type()) type = detail::demangle(t->name());
    message = "(not derived from std::exception)";
  }
  proto::ErrorInfo error = make_error(proto::ErrorInfo::TASK_ERROR, message, function, type);
  error.set_node(core_.config().node_id.hex());
  error.set_pid(::getpid());
  return error;
}

void TaskExecutor::execute(const proto::TaskSpec& spec, proto::TaskResult* result, const std::atomic<bool>* cancelled,
                           bool relabel) {
  auto start = std::chrono::steady_clock::now();
  result->set_task_id(spec.task_id());
  proto::ObjectValue* value = result->mutable_value();
  CurrentTaskScope scope(&spec, cancelled);
  const std::string& label = spec.name().empty() ? spec.function() : spec.name();
  if (OutputForwarder* out = core_.output(); out != nullptr && relabel) out->set_label(label);
  uint64_t event =
      events_.started(TaskId::from_binary(spec.task_id()), label, spec.attempt(), !spec.actor_id().empty());
  try {
    std::vector<std::shared_ptr<detail::Buffer>> keep;
    std::vector<detail::ArgView> views;
    keep.reserve(spec.args_size());
    views.reserve(spec.args_size());
    for (const auto& arg : spec.args()) {
      if (arg.has_inline_data()) {
        views.push_back({reinterpret_cast<const uint8_t*>(arg.inline_data().data()), arg.inline_data().size()});
        continue;
      }
      keep.push_back(core_.resolve_arg(arg));
      views.push_back({keep.back()->data(), keep.back()->size()});
    }
    ObjectId return_id = ObjectId::from_binary(spec.return_id());
    auto sink = std::make_unique<ResultWriter>(core_, return_id, value);
    // ObjectRefs inside the result, kept alive until their owners hold them for the caller.
    std::vector<std::shared_ptr<detail::RefState>> returned_refs;
    detail::NestedRefCollector collect(&returned_refs);
    if (spec.actor_id().empty()) {
      const detail::FunctionEntry* fn = detail::Registry::instance().find_function(spec.function());
      if (fn == nullptr)
        throw Error("function '" + spec.function() + "' is not registered in this worker's executable; "
                    "was the worker started from a different build?");
      if (fn->arity != static_cast<size_t>(spec.args_size()))
        throw Error("'" + spec.function() + "' takes " + std::to_string(fn->arity) + " arguments, got " +
                    std::to_string(spec.args_size()));
      fn->invoke(views, *sink);
    } else {
      if (!actor_ || actor_id_ != ActorId::from_binary(spec.actor_id()))
        throw ActorDiedError("this worker does not host actor " + ActorId::from_binary(spec.actor_id()).hex());
      const detail::MethodEntry* m = detail::Registry::instance().find_method(spec.function());
      if (m == nullptr) throw Error("actor method '" + spec.function() + "' is not registered");
      if (m->class_key != actor_class_)
        throw Error("'" + spec.function() + "' is not a method of " + actor_class_);
      if (m->arity != static_cast<size_t>(spec.args_size()))
        throw Error("'" + spec.function() + "' takes " + std::to_string(m->arity) + " arguments, got " +
                    std::to_string(spec.args_size()));
      m->invoke(actor_.get(), views, *sink);
    }
    if (sink->large() != nullptr) *value->mutable_shm() = sink->release_large();
    core_.pin_for_result(returned_refs, spec, value);
  } catch (...) {
    value->Clear();
    *value->mutable_error() = current_exception_error(label);
  }
  events_.ended(event, value->has_error() ? &value->error() : nullptr);
  result->set_exec_us(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count()));
}

void TaskExecutor::describe_events(const proto::TaskEventsRequest& req, proto::TaskEvents* out) const {
  events_.describe(req, out);
  if (actor_known_.load(std::memory_order_acquire)) {
    out->set_actor_id(actor_id_.binary());
    out->set_actor_class(actor_class_);
    out->mutable_actor_calls()->set_name(actor_class_);
  }
}

grpc::Status TaskExecutor::push_tasks(grpc::ServerContext* ctx,
                                      grpc::ServerReaderWriter<proto::ResultBatch, proto::TaskBatch>* stream) {
  serve({[&](proto::TaskBatch* b) { return stream->Read(b); },
         [&](const proto::ResultBatch& r) { return stream->Write(r); }, [&] { ctx->TryCancel(); }});
  return grpc::Status::OK;
}

bool TaskExecutor::run_into(const proto::TaskSpec& spec, proto::ResultBatch* pending,
                            std::chrono::steady_clock::time_point* first_pending) {
  {
    std::lock_guard<std::mutex> exec(exec_mu_);
    run(spec, pending->add_results(), /*relabel=*/true);
  }
  if (pending->results_size() == 1) *first_pending = std::chrono::steady_clock::now();
  return pending->results_size() >= kMaxResultsPerBatch ||
         std::chrono::steady_clock::now() - *first_pending >= kMaxResultDelay;
}

void TaskExecutor::serve_socket(std::unique_ptr<FrameSocket> socket) {
  std::string in, out;
  // The first frame is the cluster token; a peer that sends nothing or a long frame
  // instead is dropped without holding this thread or memory.
  socket->set_read_timeout(std::chrono::seconds(10));
  if (!socket->read(&in, /*max_frame=*/4096) || !token_matches(in)) {
    GANTRY_LOG_WARN("refused a task stream on the worker's socket: {}",
                    in.empty() ? "no cluster token" : "wrong cluster token");
    return;
  }
  socket->set_read_timeout(std::chrono::milliseconds(0));
  if (CallPool* pool = pool_.load(std::memory_order_acquire)) {
    // Calls overlap: a reader thread takes batches while this one writes results.
    std::string in_frame, out_frame;
    serve_concurrent({[&](proto::TaskBatch* b) {
                        if (!socket->read(&in_frame)) return false;
                        if (b->ParseFromString(in_frame)) return true;
                        GANTRY_LOG_WARN("dropping a task stream: malformed task batch of {} bytes", in_frame.size());
                        return false;
                      },
                      [&](const proto::ResultBatch& r) {
                        r.SerializeToString(&out_frame);
                        return socket->write(out_frame);
                      },
                      [&] { socket->shutdown_both(); }},
                     *pool);
    return;
  }
  // One thread does everything: it reads a batch when it has nothing to run, and while
  // it writes results into a full socket it takes the batches the caller sends meanwhile
  // (write_reading), so neither side waits on the other. A call costs no thread hand-off.
  std::deque<proto::TaskSpec> queue;
  proto::TaskBatch batch;
  auto take = [&](std::string& frame) {
    if (!batch.ParseFromString(frame)) {
      GANTRY_LOG_WARN("dropping a task stream: malformed task batch of {} bytes", frame.size());
      return false;
    }
    for (auto& t : *batch.mutable_tasks()) queue.push_back(std::move(t));
    return true;
  };
  proto::ResultBatch pending;
  std::chrono::steady_clock::time_point first_pending;
  bool broken = false, ended = false;
  auto flush = [&] {
    if (pending.results_size() == 0) return;
    pending.SerializeToString(&out);
    pending.Clear();
    if (!socket->write_reading(out, take)) broken = true;
  };
  while (!broken) {
    if (queue.empty()) {
      if (pending.results_size() > 0) {
        flush();
      } else if (ended || !socket->read(&in)) {
        ended = true;
        break;
      } else if (!take(in)) {
        broken = true;
      }
      continue;
    }
    proto::TaskSpec spec = std::move(queue.front());
    queue.pop_front();
    if (run_into(spec, &pending, &first_pending)) flush();
  }
  flush();
  if (broken) socket->shutdown_both();
}

void TaskExecutor::serve_concurrent(const BatchIo& io, CallPool& pool) {
  // Shared with calls still running when the stream ends early (the caller went away):
  // their results are dropped.
  struct StreamState {
    std::mutex mu;  // guards everything below
    std::condition_variable cv;
    proto::ResultBatch results;  // finished, not sent yet
    int running = 0;             // handed to the pool, not finished
    bool reader_done = false;
    bool broken = false;
  };
  auto st = std::make_shared<StreamState>();
  // A reader thread hands calls to the pool in arrival order, so they start in that order.
  std::thread reader([this, &io, &pool, st] {
    proto::TaskBatch batch;
    while (io.read(&batch)) {
      for (auto& t : *batch.mutable_tasks()) {
        {
          std::lock_guard<std::mutex> lock(st->mu);
          ++st->running;
        }
        auto spec = std::make_shared<proto::TaskSpec>(std::move(t));
        pool.post([this, st, spec] {
          proto::TaskResult result;
          run(*spec, &result, /*relabel=*/false);
          std::lock_guard<std::mutex> lock(st->mu);
          --st->running;
          if (!st->broken) st->results.add_results()->Swap(&result);
          st->cv.notify_all();
        });
      }
      batch.Clear();
    }
    std::lock_guard<std::mutex> lock(st->mu);
    st->reader_done = true;
    st->cv.notify_all();
  });
  // This thread sends results as calls finish, together when several are ready, until the
  // caller ends the stream and every call it sent has answered.
  std::unique_lock<std::mutex> lock(st->mu);
  while (true) {
    st->cv.wait(lock, [&] { return st->results.results_size() > 0 || (st->reader_done && st->running == 0); });
    if (st->results.results_size() == 0) break;
    proto::ResultBatch out;
    out.Swap(&st->results);
    lock.unlock();
    bool ok = io.write(out);
    lock.lock();
    if (!ok) {
      st->broken = true;
      break;
    }
  }
  bool broken = st->broken;
  lock.unlock();
  // A reader blocked in read returns when the caller ends the stream, or when cancel does.
  if (broken) io.cancel();
  reader.join();
}

void TaskExecutor::serve(const BatchIo& io) {
  if (CallPool* pool = pool_.load(std::memory_order_acquire)) {
    serve_concurrent(io, *pool);
    return;
  }
  // The gRPC stream cannot wait for "readable or writable" at once, so two threads share
  // the reading. When the executor has nothing to do it reads the next
  // batch itself, so a lone call goes socket -> user code without a thread hand-off. While
  // it runs tasks or writes results, a helper thread reads instead: the stream must never
  // stop being read, or a caller blocked writing to us (while holding its submitter's
  // lock) could stop reading our results, and both would wait forever.
  std::mutex mu;  // guards the queue and the flags below
  std::condition_variable cv;
  std::deque<proto::TaskSpec> queue;
  bool reading = false;         // one thread is inside io.read
  bool executor_busy = false;   // the executor runs tasks or writes results
  bool reader_done = false;     // the stream ended
  bool stopping = false;        // the executor left
  // Needs `lock` held on entry; reads one batch with it released.
  auto read_batch = [&](std::unique_lock<std::mutex>& lock) {
    reading = true;
    lock.unlock();
    proto::TaskBatch batch;
    bool ok = io.read(&batch);
    lock.lock();
    reading = false;
    if (ok) {
      for (auto& t : *batch.mutable_tasks()) queue.push_back(std::move(t));
    } else {
      reader_done = true;
    }
    cv.notify_all();
  };
  std::thread helper([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      cv.wait(lock, [&] { return reader_done || stopping || (executor_busy && !reading); });
      if (reader_done || stopping) return;
      read_batch(lock);
    }
  });

  proto::ResultBatch pending;
  std::chrono::steady_clock::time_point first_pending;
  bool broken = false;
  auto flush = [&] {
    if (pending.results_size() == 0) return;
    if (!io.write(pending)) broken = true;
    pending.Clear();
  };
  std::unique_lock<std::mutex> lock(mu);
  while (!broken) {
    if (queue.empty()) {
      if (pending.results_size() > 0) {
        executor_busy = true;
        cv.notify_all();
        lock.unlock();
        flush();
        lock.lock();
        continue;
      }
      executor_busy = false;
      if (reader_done) break;
      if (!reading) {
        read_batch(lock);
      } else {
        cv.wait(lock, [&] { return !queue.empty() || reader_done || !reading; });
      }
      continue;
    }
    proto::TaskSpec spec = std::move(queue.front());
    queue.pop_front();
    if (!executor_busy) {
      executor_busy = true;
      cv.notify_all();  // the helper takes over reading
    }
    lock.unlock();
    if (run_into(spec, &pending, &first_pending)) flush();
    lock.lock();
  }
  stopping = true;
  cv.notify_all();
  lock.unlock();
  flush();
  // A helper blocked in read returns when the caller ends the stream, or when cancel does.
  if (broken) io.cancel();
  helper.join();
}

void TaskExecutor::create_actor(const proto::CreateActorRequest& req, proto::CreateActorReply* reply) {
  std::lock_guard<std::mutex> exec(exec_mu_);
  const detail::FactoryEntry* factory = detail::Registry::instance().find_factory(req.factory());
  if (OutputForwarder* out = core_.output()) out->set_label(req.class_name());
  try {
    if (factory == nullptr)
      throw Error("actor factory '" + req.factory() + "' is not registered in this worker's executable");
    if (actor_) throw Error("this worker already hosts an actor");
    std::vector<std::shared_ptr<detail::Buffer>> keep;
    std::vector<detail::ArgView> views;
    for (const auto& arg : req.args()) {
      keep.push_back(core_.resolve_arg(arg));
      views.push_back({keep.back()->data(), keep.back()->size()});
    }
    ++running_;
    actor_ = factory->create(views);
    --running_;
    actor_class_ = factory->class_key;
    actor_id_ = ActorId::from_binary(req.actor_id());
    actor_resources_ = req.resources();
    actor_known_.store(true, std::memory_order_release);
    if (req.max_concurrency() > 1) {
      pool_owner_ = std::make_unique<CallPool>(req.max_concurrency());
      pool_.store(pool_owner_.get(), std::memory_order_release);
    }
    reply->set_ok(true);
  } catch (...) {
    running_ = 0;
    proto::ErrorInfo e = current_exception_error(req.factory());
    e.set_kind(proto::ErrorInfo::ACTOR_DIED);
    e.set_message("the actor's factory " + req.factory() + " threw " + e.remote_type() + ": " + e.message());
    *reply->mutable_error() = std::move(e);
  }
}

}  // namespace gantry::internal
