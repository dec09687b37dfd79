#include "runtime/task_stream.h"

namespace gantry::internal {

TaskStream::TaskStream(const std::shared_ptr<grpc::Channel>& channel, ResultHandler on_results,
                       BrokenHandler on_broken)
    : stub_(proto::WorkerService::NewStub(channel)),
      on_results_(std::move(on_results)),
      on_broken_(std::move(on_broken)) {
  stream_ = stub_->PushTasks(&ctx_);
  writer_ = std::thread([this] { write_loop(); });
  reader_ = std::thread([this] { read_loop(); });
}

TaskStream::~TaskStream() {
  close();
  if (writer_.joinable()) writer_.join();
  if (reader_.joinable()) reader_.join();
}

void TaskStream::send(proto::TaskSpec spec) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(spec));
  }
  cv_.notify_one();
}

void TaskStream::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  cv_.notify_one();
}

void TaskStream::cancel() {
  cancelled_ = true;
  close();
  ctx_.TryCancel();
}

void TaskStream::write_loop() {
  proto::TaskBatch batch;
  while (true) {
    std::vector<proto::TaskSpec> specs;
    bool closing = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !queue_.empty() || closing_; });
      specs.swap(queue_);
      closing = closing_;
    }
    if (!specs.empty()) {
      batch.Clear();
      batch.mutable_tasks()->Reserve(static_cast<int>(specs.size()));
      for (auto& s : specs) *batch.add_tasks() = std::move(s);
      if (!stream_->Write(batch)) return;  // broken: the reader reports it
    }
    if (closing) {
      std::lock_guard<std::mutex> lock(mu_);
      if (queue_.empty()) break;
    }
  }
  stream_->WritesDone();
}

void TaskStream::read_loop() {
  proto::ResultBatch batch;
  while (stream_->Read(&batch)) on_results_(batch);
  grpc::Status status = stream_->Finish();
  bool closing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing = closing_;
  }
  if (cancelled_) return;
  if (!closing || !status.ok()) {
    // Wake the writer so it can exit, then report.
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    cv_.notify_one();
    on_broken_(status.ok() ? std::string("stream ended") : status.error_message());
  }
}

}  // namespace gantry::internal
