#include "worker_run.h"

#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <system_error>

#include "checkpoint_access.h"
#include "checkpoint_files.h"
#include "gantry/gantry.h"

namespace gantry::train::detail {
namespace fs = std::filesystem;
namespace {

std::mutex& loops_mu() {
  static std::mutex mu;
  return mu;
}
std::map<std::string, TrainLoop>& loops() {
  static std::map<std::string, TrainLoop> table;
  return table;
}

// Limits the loop's thread pools to the worker's CPUs. LibTorch's setting does not reach
// OpenBLAS's own threads, so those are set through OpenBLAS's call when it is loaded.
void limit_threads(int cpus) {
  int n = std::max(1, cpus);
  std::string text = std::to_string(n);
  setenv("OMP_NUM_THREADS", text.c_str(), 1);
  setenv("OPENBLAS_NUM_THREADS", text.c_str(), 1);
  setenv("MKL_NUM_THREADS", text.c_str(), 1);
  torch::set_num_threads(n);
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(n);
}

}  // namespace

bool register_train_loop(const char* name, TrainLoop loop) {
  std::lock_guard<std::mutex> lock(loops_mu());
  loops()[name] = loop;
  return true;
}

TrainLoop find_train_loop(const std::string& name) {
  std::lock_guard<std::mutex> lock(loops_mu());
  auto it = loops().find(name);
  return it == loops().end() ? nullptr : it->second;
}

std::string train_loop_name(TrainLoop loop) {
  std::lock_guard<std::mutex> lock(loops_mu());
  for (const auto& [name, fn] : loops())
    if (fn == loop) return name;
  return {};
}

WorkerRun::WorkerRun(WorkerStart start, CheckpointFiles checkpoint)
    : start_(std::move(start)), restored_files_(std::move(checkpoint)) {
  config_ = Config(Json::parse(start_.config_json));
  storage_.storage_path = start_.storage_path;
  storage_.run_path = start_.run_path;
  storage_.local_path = make_temp_directory("gantry-train-worker");
  if (start_.use_gpu && torch::cuda::is_available() && !get_gpu_ids().empty()) {
    // The node agent gives a GPU worker its devices as CUDA_VISIBLE_DEVICES: its first
    // is device 0 here.
    device_ = torch::Device(torch::kCUDA, 0);
  }
}

WorkerRun::~WorkerRun() {
  restored_.reset();
  std::error_code ec;
  fs::remove_all(storage_.local_path, ec);
}

void WorkerRun::set_environment() const {
  auto set = [](const char* name, const std::string& value) { setenv(name, value.c_str(), 1); };
  set("RANK", std::to_string(start_.world_rank));
  set("LOCAL_RANK", std::to_string(start_.local_rank));
  set("WORLD_SIZE", std::to_string(start_.world_size));
  set("LOCAL_WORLD_SIZE", std::to_string(start_.local_world_size));
  set("NODE_RANK", std::to_string(start_.node_rank));
  set("GROUP_RANK", std::to_string(start_.node_rank));
  set("MASTER_ADDR", start_.master_addr);
  set("MASTER_PORT", std::to_string(start_.master_port));
  set("TORCHELASTIC_RESTART_COUNT", std::to_string(start_.restart_count));
  set("TORCHELASTIC_MAX_RESTARTS", std::to_string(start_.max_restarts));
  set("TORCHELASTIC_RUN_ID", start_.run_id);
}

void WorkerRun::run(TrainLoop loop) {
  set_environment();
  limit_threads(start_.cpus);
  try {
    comm_.emplace(collective::Communicator::join({.group = start_.group,
                                                  .world_size = start_.world_size,
                                                  .rank = start_.world_rank,
                                                  .join_timeout = std::chrono::minutes(2)}));
    TrainContext ctx(this);
    loop(ctx);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    finished_ = true;
    changed_.notify_all();
    throw;
  }
  std::lock_guard<std::mutex> lock(mu_);
  finished_ = true;
  changed_.notify_all();
}

PollResult WorkerRun::poll(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, timeout, [&] { return !unsent_.empty() || finished_; });
  PollResult out;
  out.reports.assign(std::make_move_iterator(unsent_.begin()), std::make_move_iterator(unsent_.end()));
  unsent_.clear();
  out.finished = finished_;
  return out;
}

collective::Communicator& WorkerRun::communicator() {
  if (!comm_.has_value()) throw Error("the run's communicator is not joined yet");
  return *comm_;
}

std::optional<Checkpoint> WorkerRun::checkpoint() {
  if (restored_files_.empty()) return std::nullopt;
  if (!restored_.has_value()) {
    fs::path dir = fs::path(storage_.local_path) / "checkpoint";
    fs::create_directories(dir);
    for (const auto& [rel, bytes] : restored_files_.files) write_checkpoint_file(dir, rel, bytes);
    Json metadata = restored_files_.metadata_json.empty() ? Json::object() : Json::parse(restored_files_.metadata_json);
    std::ofstream(dir / Checkpoint::kMetadataFile) << metadata.dump(2) << "\n";
    restored_ = CheckpointAccess::make(dir.string(), std::move(metadata), false, resume_);
  }
  return restored_;
}

void WorkerRun::wait_for_every_rank(int64_t index) {
  std::string run_prefix = "gantry/train/" + start_.run_id + "/" + std::to_string(start_.restart_count) + "/report/";
  std::string prefix = run_prefix + std::to_string(index) + "/";
  kv::put(prefix + "rank/" + std::to_string(start_.world_rank), "");
  if (kv::add(prefix + "count", 1) == start_.world_size) {
    kv::put(prefix + "done", "");
  } else {
    BlockedScope waiting;
    auto done = kv::wait(prefix + "done", std::chrono::milliseconds(start_.report_timeout_ms));
    if (!done.has_value()) {
      std::vector<std::string> arrived = kv::keys(prefix + "rank/");
      std::string missing;
      for (int r = 0; r < start_.world_size; ++r) {
        std::string key = prefix + "rank/" + std::to_string(r);
        if (std::find(arrived.begin(), arrived.end(), key) == arrived.end())
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
      throw Error("report " + std::to_string(index) + " of run " + start_.run_name + ": rank(s) " + missing +
                  " did not report within " + std::to_string(start_.report_timeout_ms / 1000) +
                  " s while the others waited (every rank must call report the same number of times)");
    }
  }
  // Every rank has passed the previous report's barrier: its keys can go.
  if (start_.world_rank == 0 && index > 0) {
    std::string old = run_prefix + std::to_string(index - 1) + "/";
    for (const auto& key : kv::keys(old)) kv::del(key);
  }
}

void WorkerRun::report(const Json& metrics, std::optional<Checkpoint> checkpoint, ReportOptions options) {
  if (!metrics.is_object()) throw Error("report takes metrics as a JSON object of named values, not " + metrics.dump());
  ReportRecord record;
  record.index = next_report_++;
  record.metrics_json = metrics.dump();
  record.samples = resume_->samples_read - samples_reported_;
  samples_reported_ = resume_->samples_read;
  record.all_ranks = options.all_ranks;
  if (checkpoint.has_value() && (start_.world_rank == 0 || options.all_ranks)) {
    record.checkpoint = read_checkpoint_files(checkpoint->path());
  }
  wait_for_every_rank(record.index);
  std::lock_guard<std::mutex> lock(mu_);
  unsent_.push_back(std::move(record));
  changed_.notify_all();
}

WorkerInfo TrainWorker::info() {
  RuntimeContext rc = runtime_context();
  return WorkerInfo{rc.node_id, rc.node_ip, rc.gpu_ids, rc.pid};
}

int TrainWorker::free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error("cannot open a socket to find a free port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  if (port < 0) throw Error("cannot find a free port on this node");
  return port;
}

bool TrainWorker::run(WorkerStart start, CheckpointFiles checkpoint) {
  TrainLoop loop = find_train_loop(start.loop_name);
  if (loop == nullptr) {
    throw Error("no training loop \"" + start.loop_name + "\" is registered in this worker's executable");
  }
  auto run = std::make_shared<WorkerRun>(std::move(start), std::move(checkpoint));
  {
    std::lock_guard<std::mutex> lock(mu_);
    run_ = run;
    started_.notify_all();
  }
  run->run(loop);
  return true;
}

PollResult TrainWorker::poll(int64_t timeout_ms) {
  std::shared_ptr<WorkerRun> run;
  {
    std::unique_lock<std::mutex> lock(mu_);
    started_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return run_ != nullptr; });
    run = run_;
  }
  if (run == nullptr) return {};
  return run->poll(std::chrono::milliseconds(timeout_ms));
}

}  // namespace gantry::train::detail
