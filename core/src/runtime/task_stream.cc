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
                                                        bool force_grpc) {
  std::string path = force_grpc ? std::string() : task_socket_path(worker_address);
  if (!path.empty()) {
    std::string error;
    // The first frame is the cluster token (the worker hangs up on anything else).
    if (auto socket = FrameSocket::connect_unix(path, &error); socket && socket->write(cluster_token()))
      return std::make_unique<SocketTransport>(std::move(socket));
    // Fall through: the gRPC stream reports the failure (or works) the usual way.
  }
  return std::make_unique<GrpcTransport>(channels.get(worker_address));
}

TaskStream::TaskStream(std::unique_ptr<StreamTransport> transport, ResultHandler on_results, BrokenHandler on_broken)
    : transport_(std::move(transport)), on_results_(std::move(on_results)), on_broken_(std::move(on_broken)) {
  reader_ = std::thread([this] { read_loop(); });
}

TaskStream::~TaskStream() {
  close();
  if (reader_.joinable()) reader_.join();
}

void TaskStream::send(proto::TaskSpec spec) {
  std::unique_lock<std::mutex> lock(mu_);
  if (closing_ || broken_) return;  // the reader reports a broken stream
  queue_.push_back(std::move(spec));
  if (writing_) return;  // the thread writing now takes it in its next batch
  write_queued(lock);
}

void TaskStream::write_queued(std::unique_lock<std::mutex>& lock) {
  // The caller writes itself: no hand-off to a writer thread on the latency path. Specs
  // queued by others meanwhile go out together in the next batch.
  writing_ = true;
  while (!queue_.empty() && !broken_) {
    std::vector<proto::TaskSpec> specs;
    specs.swap(queue_);
    lock.unlock();
    batch_.Clear();
    batch_.mutable_tasks()->Reserve(static_cast<int>(specs.size()));
    for (auto& s : specs) *batch_.add_tasks() = std::move(s);
    bool ok = transport_->write(batch_);
    lock.lock();
    if (!ok) broken_ = true;
  }
  writing_ = false;
  if (closing_ && !done_writing_) {
    done_writing_ = true;
    transport_->writes_done();
  }
}

void TaskStream::close() {
  std::unique_lock<std::mutex> lock(mu_);
  closing_ = true;
  if (!writing_ && !done_writing_) {
    done_writing_ = true;
    transport_->writes_done();
  }
}

void TaskStream::cancel() {
  cancelled_ = true;
  close();
  transport_->cancel();
}

void TaskStream::read_loop() {
  proto::ResultBatch batch;
  while (transport_->read(&batch)) on_results_(batch);
  std::string error;
  bool clean = transport_->finish(&error);
  bool closing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing = closing_;
    broken_ = true;
  }
  if (cancelled_) return;
  if (!closing || !clean) on_broken_(clean ? std::string("the worker closed the stream") : error);
}

}  // namespace gantry::internal
