#include "gantry/train/context.h"

#include "worker_run.h"

namespace gantry::train {

int TrainContext::world_rank() const { return run_->start().world_rank; }
int TrainContext::local_rank() const { return run_->start().local_rank; }
int TrainContext::world_size() const { return run_->start().world_size; }
int TrainContext::local_world_size() const { return run_->start().local_world_size; }
int TrainContext::node_rank() const { return run_->start().node_rank; }
int TrainContext::restart_count() const { return run_->start().restart_count; }
torch::Device TrainContext::device() const { return run_->device(); }
collective::Communicator& TrainContext::communicator() { return run_->communicator(); }
const std::string& TrainContext::run_name() const { return run_->start().run_name; }
const StorageInfo& TrainContext::storage() const { return run_->storage(); }
const Config& TrainContext::config() const { return run_->config(); }
std::optional<Checkpoint> TrainContext::checkpoint() { return run_->checkpoint(); }

void TrainContext::report(const Json& metrics, std::optional<Checkpoint> checkpoint, ReportOptions options) {
  run_->report(metrics, std::move(checkpoint), options);
}

std::shared_ptr<DistributedDataParallel> TrainContext::make_ddp(std::shared_ptr<torch::nn::Module> module,
                                                                DdpOptions options) {
  auto ddp = std::make_shared<DistributedDataParallel>(std::move(module), run_->communicator(), options);
  run_->keep(ddp);
  return ddp;
}

std::shared_ptr<detail::ResumeState> TrainContext::resume_state() { return run_->resume_state(); }

}  // namespace gantry::train
