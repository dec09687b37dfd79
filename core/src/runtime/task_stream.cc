#include "runtime/task_stream.h"

#include "rpc/frame_socket.h"
#include "rpc/auth.h"
#include "rpc/grpc_util.h"

namespace gantry::internal {
namespace {

class GrpcTransport final : public StreamTransport {
 public:
  explicit GrpcTransport(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(proto::WorkerService::NewStub(channel)), stream_(stub_->PushTasks(&ctx_)) {}
  bool write(const proto::TaskBatch& batch) override { return stream_->Write(batch); }
  bool read(proto::ResultBatch* batch) override { return stream_->Read(batch); }
  void writes_done() override { stream_->WritesDone(); }
  bool finish(std::string* error) override {
    grpc::Status s = stream_->Finish();
    if (!s.ok()) *error = s.error_message();
    return s.ok();
  }
  void cancel() override { ctx_.TryCancel(); }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<proto::WorkerService::Stub> stub_;
  std::unique_ptr<grpc::ClientReaderWriter<proto::TaskBatch, proto::ResultBatch>> stream_;
};

class SocketTransport final : public StreamTransport {
 public:
  explicit SocketTransport(std::unique_ptr<FrameSocket> socket) : socket_(std::move(socket)) {}
  bool write(const proto::TaskBatch& batch) override {
    batch.SerializeToString(&out_);
    return socket_->write(out_);
  }
  bool read(proto::ResultBatch* batch) override {
    if (!socket_->read(&in_)) return false;
    if (!batch->ParseFromString(in_)) {
      error_ = "malformed result batch from the worker";
      return false;
    }
    return true;
  }
  void writes_done() override { socket_->shutdown_write(); }
  bool finish(std::string* error) override {
    // A clean end is the worker closing after our shutdown_write; anything else (a reset,
    // a parse failure) is an error.
    if (!error_.empty()) *error = error_;
    else if (!socket_->reached_end()) *error = socket_->error();
    return error->empty();
  }
  void cancel() override { socket_->shutdown_both(); }

 private:
  std::unique_ptr<FrameSocket> socket_;
  std::string out_, in_, error_;
};

}  // namespace

std::unique_ptr<StreamTransport> connect_task_transport(ChannelCache& channels, const std::string& worker_address,
                                                        const std::string& task_address, bool force_grpc) {
  if (!force_grpc && !task_address.empty()) {
    std::string error;
    // The first frame is the cluster token (the worker hangs up on anything else).
    if (auto socket = FrameSocket::connect(task_address, &error); socket && socket->write(cluster_token()))
      return std::make_unique<SocketTransport>(std::move(socket));
    // Fall through: the gRPC stream reports the failure (or works) the usual way.
  }
  return std::make_unique<GrpcTransport>(channels.get(worker_address));
}

struct TaskStream::State {
  State(std::unique_ptr<StreamTransport> t, ResultHandler r, BrokenHandler b)
      : transport(std::move(t)), on_results(std::move(r)), on_broken(std::move(b)) {}

  // Needs mu held (released around each write). Writes until the queue is empty.
  void write_queued(std::unique_lock<std::mutex>& lock);
  void close();

  std::unique_ptr<StreamTransport> transport;
  ResultHandler on_results;
  BrokenHandler on_broken;

  std::mutex mu;  // guards the queue and flags below
  std::vector<proto::TaskSpec> queue;
  proto::TaskBatch batch;     // used only by the thread that is writing
  bool writing = false;       // a thread is writing; others just queue
  bool closing = false;
  bool done_writing = false;  // writes_done sent
  bool broken = false;        // a write failed or the reader saw the end
  std::atomic<bool> cancelled{false};
};

TaskStream::TaskStream(std::unique_ptr<StreamTransport> transport, ResultHandler on_results, BrokenHandler on_broken)
    : state_(std::make_shared<State>(std::move(transport), std::move(on_results), std::move(on_broken))) {
  reader_ = std::thread([state = state_] { read_loop(state); });
}

TaskStream::~TaskStream() {
  close();
  if (!reader_.joinable()) return;
  // Dropped by its own handler: the reader thread still holds the state and ends by
  // itself once the stream is done.
  if (reader_.get_id() == std::this_thread::get_id()) reader_.detach();
  else reader_.join();
}

void TaskStream::enqueue(proto::TaskSpec spec) {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->closing || state_->broken) return;  // the reader reports a broken stream
  state_->queue.push_back(std::move(spec));
}

void TaskStream::flush() {
  std::unique_lock<std::mutex> lock(state_->mu);
  // The thread writing now takes them; after writes_done nothing more may be written.
  if (state_->writing || state_->queue.empty() || state_->done_writing) return;
  state_->write_queued(lock);
}

void TaskStream::send(proto::TaskSpec spec) {
  enqueue(std::move(spec));
  flush();
}

void TaskStream::State::write_queued(std::unique_lock<std::mutex>& lock) {
  writing = true;
  while (!queue.empty() && !broken) {
    std::vector<proto::TaskSpec> specs;
    specs.swap(queue);
    lock.unlock();
    batch.Clear();
    batch.mutable_tasks()->Reserve(static_cast<int>(specs.size()));
    for (auto& s : specs) *batch.add_tasks() = std::move(s);
    bool ok = transport->write(batch);
    lock.lock();
    if (!ok) broken = true;
  }
  writing = false;
  if (closing && !done_writing) {
    done_writing = true;
    transport->writes_done();
  }
}

void TaskStream::State::close() {
  std::unique_lock<std::mutex> lock(mu);
  closing = true;
  if (!writing && !done_writing) {
    done_writing = true;
    transport->writes_done();
  }
}

void TaskStream::close() { state_->close(); }

void TaskStream::cancel() {
  state_->cancelled = true;
  state_->close();
  state_->transport->cancel();
}

void TaskStream::read_loop(const std::shared_ptr<State>& state) {
  proto::ResultBatch batch;
  while (state->transport->read(&batch)) state->on_results(batch);
  std::string error;
  bool clean = state->transport->finish(&error);
  bool closing;
  {
    std::lock_guard<std::mutex> lock(state->mu);
    closing = state->closing;
    state->broken = true;
  }
  if (state->cancelled) return;
  if (!closing || !clean) state->on_broken(clean ? std::string("the worker closed the stream") : error);
}

}  // namespace gantry::internal
