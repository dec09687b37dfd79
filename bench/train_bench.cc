// Train figures (issue 12): data-parallel training of an MLP 784-1024-1024-10 (ReLU),
// batch 64 per rank, SGD, on CPUs with one thread per rank, through gantry's DDP next to
// two baselines run in the same invocation:
//   - independent: two processes, each running the same loop in plain LibTorch at the same
//     time with no synchronisation (the ceiling on two cores);
//   - c10d_gloo: the same two ranks averaging gradients with one flat allreduce over c10d's
//     ProcessGroupGloo after backward (what a LibTorch user would otherwise write).
// Then the time from `fit()` to every rank's first step, and from a worker's SIGKILL to the
// restarted group's first step.
//
//     gantry_train_bench                      # 5 rounds of every figure, ~1.5 minutes on 2 cores
//     gantry_train_bench --quick              # 1 short round (the smoke test)
//     gantry_train_bench --bucket-cap-mb 4    # DDP with other buckets (DdpOptions::bucket_cap_mb)
//
// A round runs the independent processes, c10d and gantry DDP, each round starting with
// another of them; the figures are the medians over the rounds, so that a slow spell of
// the machine does not land on one side of a comparison only. The ratios are medians of
// each round's ratio.
//
// Output: one `NAME VALUE` line per figure; lines starting with '#' are comments (date,
// commit, setup, each round, raw figures, ratios against the targets). Speed never fails
// the run: the exit status is non-zero only when a run throws or fails.
//
// The baselines' processes descend from a launcher forked before gantry::init: they run
// only LibTorch, leave with _exit, and never hold gantry's threads or sockets.

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <vector>

#include "gantry/train.h"
#include "source_commit.h"

namespace train = gantry::train;
namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

namespace {

constexpr int kWorld = 2;
constexpr int kBatch = 64;
constexpr int kInputs = 784;
constexpr int kHidden = 1024;
constexpr int kClasses = 10;
constexpr double kLearningRate = 0.01;
constexpr uint64_t kModelSeed = 1;
constexpr uint64_t kDataSeed = 100;  // + rank: every rank draws its own batches
constexpr const char* kKillKey = "gantry_train_bench/kill_unix_s";

/// How long each figure runs.
struct Workload {
  int rounds;
  int warmup_steps;
  int timed_steps;
  int allreduce_reps;  ///< blocking allreduces timed after the DDP window
  /// The kill/resume run: the step whose checkpoint is reported, seconds rank 1 trains on
  /// after it (so that the driver has committed it), and steps after the restart.
  int resume_checkpoint_step;
  double resume_kill_delay_s;
  int resume_steps_after;
  std::chrono::seconds baseline_timeout;
};

Workload workload_for(bool quick) {
  if (quick) {
    return {.rounds = 1,
            .warmup_steps = 3,
            .timed_steps = 20,
            .allreduce_reps = 5,
            .resume_checkpoint_step = 5,
            .resume_kill_delay_s = 0.3,
            .resume_steps_after = 5,
            .baseline_timeout = std::chrono::seconds(120)};
  }
  return {.rounds = 5,
          .warmup_steps = 10,
          .timed_steps = 200,
          .allreduce_reps = 50,
          .resume_checkpoint_step = 20,
          .resume_kill_delay_s = 0.5,
          .resume_steps_after = 20,
          .baseline_timeout = std::chrono::seconds(300)};
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t mid = v.size() / 2;
  return v.size() % 2 == 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

double mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0 : sum / static_cast<double>(v.size());
}

// The benchmark's model: inputs -> hidden -> hidden -> classes, ReLU between.
struct Mlp : torch::nn::Module {
  Mlp(int64_t inputs, int64_t hidden, int64_t classes)
      : fc1(register_module("fc1", torch::nn::Linear(inputs, hidden))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, hidden))),
        fc3(register_module("fc3", torch::nn::Linear(hidden, classes))) {}
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(fc1->forward(x));
    x = torch::relu(fc2->forward(x));
    return fc3->forward(x);
  }
  int64_t inputs() const { return fc1->options.in_features(); }
  torch::nn::Linear fc1, fc2, fc3;
};

int64_t parameter_count(const torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

// One SGD step on a fresh random batch; `after_backward` runs between backward and the
// optimizer (the c10d baseline's gradient averaging).
void train_step(Mlp& model, torch::optim::SGD& opt, const std::function<void()>& after_backward = {}) {
  torch::Tensor x = torch::randn({kBatch, model.inputs()});
  torch::Tensor y = torch::randint(0, kClasses, {kBatch}, torch::kLong);
  opt.zero_grad();
  torch::Tensor loss = torch::nn::functional::cross_entropy(model.forward(x), y);
  loss.backward();
  if (after_backward) after_backward();
  opt.step();
}

// LibTorch's intra-op pool and OpenBLAS's own threads, both bounded to one (the trainer
// does the same for a worker of one CPU). OpenBLAS reads its environment only when loaded,
// so the environment set before forking does not reach it: its call does.
void use_one_thread() {
  torch::set_num_threads(1);
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(1);
}

void make_pipe(int fds[2]) {
  if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
}

void write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(std::string("write: ") + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
}

// ---- the baselines: plain LibTorch in forked processes, no gantry ----

/// Lets a forked rank say it is set up and wait until every rank is: the timed loops of
/// all ranks then start together.
class StartGate {
 public:
  StartGate(int ready_fd, int go_fd) : ready_fd_(ready_fd), go_fd_(go_fd) {}
  void arrive_and_wait() const {
    char byte = 1;
    if (write(ready_fd_, &byte, 1) != 1) throw std::runtime_error("start gate: cannot signal readiness");
    if (read(go_fd_, &byte, 1) != 1) throw std::runtime_error("start gate: the parent went away");
  }

 private:
  int ready_fd_;  // not owned
  int go_fd_;     // not owned
};

using ForkedBody = std::function<double(int rank, const StartGate& gate)>;

// Waits until `fd` is readable or `deadline` passes; false on timeout.
bool wait_readable(int fd, SteadyClock::time_point deadline) {
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(left));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
  }
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

/// Runs `body` in `n` forked processes at once (ranks 0..n-1) and returns the figure each
/// returned, in rank order. A child runs only `body` and leaves with _exit. Throws, naming
/// the rank, when a child fails, or when the ranks do not finish within `timeout` (then
/// every child is killed).
std::vector<double> run_forked(int n, const ForkedBody& body, std::chrono::seconds timeout) {
  int ready[2];
  int go[2];
  make_pipe(ready);
  make_pipe(go);
  std::vector<pid_t> pids;
  std::vector<int> result_fds;
  for (int rank = 0; rank < n; ++rank) {
    int result[2];
    make_pipe(result);
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      close(result[0]);
      int code = 0;
      try {
        char text[64];
        std::snprintf(text, sizeof(text), "%.17g", body(rank, StartGate(ready[1], go[0])));
        write_all(result[1], text);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "train_bench: forked rank %d: %s\n", rank, e.what());
        code = 1;
      }
      _exit(code);
    }
    close(result[1]);
    pids.push_back(pid);
    result_fds.push_back(result[0]);
  }
  close(ready[1]);
  close(go[0]);

  auto deadline = SteadyClock::now() + timeout;
  std::string failure;
  int arrived = 0;
  while (arrived < n && failure.empty()) {
    char byte;
    if (!wait_readable(ready[0], deadline)) {
      failure = "the ranks were not set up within " + std::to_string(timeout.count()) + " s";
    } else if (read(ready[0], &byte, 1) == 1) {
      ++arrived;
    } else {
      failure = "a rank died while setting up";
    }
  }
  if (failure.empty()) {
    try {
      write_all(go[1], std::string(static_cast<size_t>(n), '\1'));
    } catch (const std::exception& e) {
      failure = std::string("cannot release the ranks: ") + e.what();
    }
  }
  std::vector<std::string> texts(static_cast<size_t>(n));
  for (int rank = 0; rank < n && failure.empty(); ++rank) {
    int fd = result_fds[static_cast<size_t>(rank)];
    char buf[64];
    while (true) {
      if (!wait_readable(fd, deadline)) {
        failure = "rank " + std::to_string(rank) + " did not finish within " + std::to_string(timeout.count()) + " s";
        break;
      }
      ssize_t got = read(fd, buf, sizeof(buf));
      if (got <= 0) break;
      texts[static_cast<size_t>(rank)].append(buf, static_cast<size_t>(got));
    }
  }
  if (!failure.empty()) {
    for (pid_t pid : pids) kill(pid, SIGKILL);
  }
  close(ready[0]);
  close(go[1]);
  std::vector<double> values;
  for (int rank = 0; rank < n; ++rank) {
    close(result_fds[static_cast<size_t>(rank)]);
    int status = 0;
    while (waitpid(pids[static_cast<size_t>(rank)], &status, 0) < 0 && errno == EINTR) {
    }
    const std::string& text = texts[static_cast<size_t>(rank)];
    if (failure.empty() && (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || text.empty())) {
      failure = "rank " + std::to_string(rank) + " failed (" + describe_status(status) + ")";
    }
    if (failure.empty()) values.push_back(std::stod(text));
  }
  if (!failure.empty()) throw std::runtime_error(failure);
  return values;
}

// Steps per second over `timed_steps` steps after `warmup_steps`, both ranks released
// together. `after_backward` synchronises gradients (or nothing).
double timed_loop(Mlp& model, torch::optim::SGD& opt, const Workload& w, const StartGate& gate,
                  const std::function<void()>& after_backward) {
  gate.arrive_and_wait();
  for (int i = 0; i < w.warmup_steps; ++i) train_step(model, opt, after_backward);
  auto start = SteadyClock::now();
  for (int i = 0; i < w.timed_steps; ++i) train_step(model, opt, after_backward);
  return w.timed_steps / seconds_since(start);
}

double independent_rank(int rank, const StartGate& gate, const Workload& w) {
  use_one_thread();
  torch::manual_seed(kModelSeed);
  Mlp model(kInputs, kHidden, kClasses);
  torch::optim::SGD opt(model.parameters(), kLearningRate);
  torch::manual_seed(kDataSeed + static_cast<uint64_t>(rank));
  return timed_loop(model, opt, w, gate, {});
}

// A LibTorch user's data parallelism without DDP's Reducer: rank 0's weights broadcast
// once, then after every backward one allreduce of all gradients in one flat tensor,
// divided by the world size.
double c10d_gloo_rank(int rank, const StartGate& gate, const Workload& w, const std::string& store_path) {
  use_one_thread();
  auto store = c10::make_intrusive<c10d::FileStore>(store_path, kWorld);
  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(60));
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, kWorld, options);

  torch::manual_seed(kModelSeed + static_cast<uint64_t>(rank));  // different on purpose: the broadcast fixes it
  Mlp model(kInputs, kHidden, kClasses);
  std::vector<torch::Tensor> params = model.parameters();
  {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    for (const auto& p : params) parts.push_back(p.detach().reshape({-1}));
    std::vector<at::Tensor> flat{torch::cat(parts)};
    group->broadcast(flat)->wait();  // one tensor per device: this is the CPU
    int64_t offset = 0;
    for (auto& p : params) {
      p.detach().copy_(flat[0].narrow(0, offset, p.numel()).view_as(p));
      offset += p.numel();
    }
  }
  torch::optim::SGD opt(params, kLearningRate);
  auto average_gradients = [&] {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    for (const auto& p : params) parts.push_back(p.grad().reshape({-1}));
    std::vector<at::Tensor> flat{torch::cat(parts)};
    group->allreduce(flat)->wait();
    flat[0].div_(kWorld);
    int64_t offset = 0;
    for (auto& p : params) {
      p.mutable_grad().copy_(flat[0].narrow(0, offset, p.numel()).view_as(p));
      offset += p.numel();
    }
  };
  torch::manual_seed(kDataSeed + static_cast<uint64_t>(rank));
  double steps_per_s = timed_loop(model, opt, w, gate, average_gradients);
  group->barrier()->wait();  // neither rank tears the group down under the other
  return steps_per_s;
}

/// Which baseline a BaselineLauncher runs.
enum class Baseline : char { kIndependent = 'i', kC10dGloo = 'c' };

/// A process forked before gantry::init, so that it holds none of gantry's threads or
/// sockets, which forks the baselines' ranks on request: the baselines can then run
/// between gantry runs, round after round. It exits when its owner goes away. Not
/// thread-safe: one caller at a time.
class BaselineLauncher {
 public:
  explicit BaselineLauncher(const Workload& w) {
    int commands[2];
    int replies[2];
    make_pipe(commands);
    make_pipe(replies);
    std::cout.flush();
    std::cerr.flush();
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid_ == 0) {
      close(commands[1]);
      close(replies[0]);
      serve(commands[0], replies[1], w);
    }
    close(commands[0]);
    close(replies[1]);
    commands_ = commands[1];
    replies_ = replies[0];
  }
  ~BaselineLauncher() {
    close(commands_);  // the launcher reads EOF and exits
    close(replies_);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  BaselineLauncher(const BaselineLauncher&) = delete;
  BaselineLauncher& operator=(const BaselineLauncher&) = delete;

  /// Runs both ranks of `which` at once and returns their mean steps/s. Throws with the
  /// launcher's error.
  double run(Baseline which) {
    write_all(commands_, std::string(1, static_cast<char>(which)));
    std::string line;
    char c;
    while (true) {
      ssize_t n = read(replies_, &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw std::runtime_error("the baseline launcher died");
      if (c == '\n') break;
      line += c;
    }
    if (line.rfind("ok ", 0) == 0) return std::stod(line.substr(3));
    throw std::runtime_error(line.rfind("error ", 0) == 0 ? line.substr(6) : line);
  }

 private:
  [[noreturn]] static void serve(int commands, int replies, const Workload& w) {
    char which;
    int runs = 0;
    while (read(commands, &which, 1) == 1) {
      std::string reply;
      try {
        std::vector<double> rates;
        if (which == static_cast<char>(Baseline::kIndependent)) {
          rates = run_forked(
              kWorld, [&](int rank, const StartGate& gate) { return independent_rank(rank, gate, w); },
              w.baseline_timeout);
        } else {
          fs::path store = fs::temp_directory_path() /
                           ("gantry_train_bench_store." + std::to_string(getpid()) + "." + std::to_string(runs++));
          std::error_code ec;
          fs::remove(store, ec);
          rates = run_forked(
              kWorld, [&](int rank, const StartGate& gate) { return c10d_gloo_rank(rank, gate, w, store.string()); },
              w.baseline_timeout);
          fs::remove(store, ec);
        }
        char text[64];
        std::snprintf(text, sizeof(text), "ok %.17g", mean(rates));
        reply = text;
      } catch (const std::exception& e) {
        reply = std::string("error ") + e.what();
        std::replace(reply.begin(), reply.end(), '\n', ' ');
      }
      try {
        write_all(replies, reply + "\n");
      } catch (const std::exception&) {
        break;
      }
    }
    _exit(0);
  }

  pid_t pid_ = -1;
  int commands_ = -1;  // write end
  int replies_ = -1;   // read end
};

// ---- gantry DDP (training loops run by TorchTrainer's workers) ----

// The benchmark's loop under DistributedDataParallel: warm-up, a timed window, the same
// without synchronisation (no_sync), then the time of a blocking allreduce of all
// gradients (what the window's synchronisation would cost if none of it overlapped
// backward).
void ddp_loop(train::TrainContext& ctx) {
  const train::Config& config = ctx.config();
  const int warmup = std::max(1, config.get<int>("warmup_steps"));
  const int timed = config.get<int>("timed_steps");
  const int reps = config.get<int>("allreduce_reps");

  torch::manual_seed(kModelSeed);
  auto model = std::make_shared<Mlp>(kInputs, kHidden, kClasses);
  auto ddp = ctx.prepare_model(model, {.bucket_cap_mb = config.get<double>("bucket_cap_mb")});
  torch::optim::SGD opt(model->parameters(), kLearningRate);
  torch::manual_seed(kDataSeed + static_cast<uint64_t>(ctx.world_rank()));

  train_step(*model, opt);
  const double first_step_end = unix_seconds();
  for (int i = 1; i < warmup; ++i) train_step(*model, opt);

  const auto before = ddp->stats();
  auto start = SteadyClock::now();
  for (int i = 0; i < timed; ++i) train_step(*model, opt);
  const double window_s = seconds_since(start);
  const auto after = ddp->stats();
  const auto synced = std::max<int64_t>(1, after.synced_backwards - before.synced_backwards);
  const double exposed_per_step =
      (after.exposed_sync_seconds - before.exposed_sync_seconds) / static_cast<double>(synced);

  // The same workers without gradient synchronisation: what training in a gantry worker
  // costs next to a plain process.
  const int unsynced = std::max(1, timed / 2);
  start = SteadyClock::now();
  {
    auto local_only = ddp->no_sync();
    for (int i = 0; i < unsynced; ++i) train_step(*model, opt);
  }
  const double unsynced_steps_per_s = unsynced / seconds_since(start);

  gantry::collective::Communicator& comm = ctx.communicator();
  std::vector<float> grads(static_cast<size_t>(parameter_count(*model)), 1.0f);
  comm.allreduce(std::span<float>(grads), gantry::collective::ReduceOp::kAvg);  // warm-up
  comm.barrier();
  start = SteadyClock::now();
  for (int i = 0; i < reps; ++i) comm.allreduce(std::span<float>(grads), gantry::collective::ReduceOp::kAvg);
  const double allreduce_s = seconds_since(start) / reps;

  ctx.report({{"steps_per_s", timed / window_s},
              {"exposed_sync_s_per_step", exposed_per_step},
              {"no_sync_steps_per_s", unsynced_steps_per_s},
              {"allreduce_s", allreduce_s},
              {"gradient_bytes", grads.size() * sizeof(float)},
              {"bucket_bytes", after.bucket_bytes},
              {"first_step_end_unix_s", first_step_end}});
}
GANTRY_TRAIN_LOOP(ddp_loop);

// A small model trained until rank 1 of the first attempt kills itself (SIGKILL) a little
// after a checkpoint was reported; the restarted group loads it and records when its
// first step ended.
void resume_loop(train::TrainContext& ctx) {
  const train::Config& config = ctx.config();
  const int checkpoint_step = config.get<int>("checkpoint_step");
  const double kill_delay_s = config.get<double>("kill_delay_s");
  const int steps_after = config.get<int>("steps_after");

  torch::manual_seed(kModelSeed);
  auto model = std::make_shared<Mlp>(64, 64, kClasses);
  auto ddp = ctx.prepare_model(model);
  torch::optim::SGD opt(model->parameters(), kLearningRate);
  torch::manual_seed(kDataSeed + static_cast<uint64_t>(ctx.world_rank()));
  int resumed_from = -1;
  if (auto ck = ctx.checkpoint()) resumed_from = ck->load(*model, opt);

  if (ctx.restart_count() == 0) {
    std::optional<SteadyClock::time_point> reported;
    // Rank 0 trains on until its peer's death ends the group; the bound is only a guard.
    for (int step = 0; step < 10'000'000; ++step) {
      train_step(*model, opt);
      if (step == checkpoint_step) {
        ctx.report({{"step", step}}, train::Checkpoint::from_model(*model, opt, step));
        reported = SteadyClock::now();
      }
      if (ctx.world_rank() == 1 && reported && seconds_since(*reported) >= kill_delay_s) {
        gantry::kv::put(kKillKey, std::to_string(unix_seconds()));
        raise(SIGKILL);
      }
    }
    throw gantry::Error("resume_loop: rank 1 was not killed");
  }

  train_step(*model, opt);
  const double first_step_end = unix_seconds();
  for (int i = 1; i < steps_after; ++i) train_step(*model, opt);
  ctx.report({{"restart_count", ctx.restart_count()},
              {"resumed_from_step", resumed_from},
              {"resume_first_step_end_unix_s", first_step_end}});
}
GANTRY_TRAIN_LOOP(resume_loop);

// The value of `key` in each rank's last report that has it.
std::vector<double> per_rank(const train::Result& r, const std::string& key) {
  std::vector<double> out;
  for (const auto& reports : r.worker_metrics) {
    for (auto it = reports.rbegin(); it != reports.rend(); ++it) {
      if (it->contains(key)) {
        out.push_back(it->at(key).get<double>());
        break;
      }
    }
  }
  if (out.size() != static_cast<size_t>(kWorld))
    throw std::runtime_error("the run's reports lack \"" + key + "\" for some rank");
  return out;
}

void require_ok(const train::Result& r, const std::string& what) {
  if (!r.ok()) {
    throw std::runtime_error(what + " failed at rank " + std::to_string(r.error->rank) + " after " +
                             std::to_string(r.error->attempts) + " attempt(s): " + r.error->message);
  }
}

train::TrainerOptions trainer_options(const std::string& name, const std::string& storage, int max_failures,
                                      train::Config config) {
  return {.scaling = {.num_workers = kWorld, .resources_per_worker = {{"CPU", 1}}},
          .run = {.name = name,
                  .storage_path = storage,
                  .failure = {.max_failures = max_failures},
                  .verbose = 0,
                  .report_timeout = std::chrono::minutes(2)},
          .config = std::move(config)};
}

/// One gantry DDP run's figures (rank means, except first_step_s: the slowest rank).
struct DdpFigures {
  double steps_per_s = 0;
  double exposed_s = 0;
  double allreduce_s = 0;
  double no_sync_steps_per_s = 0;
  double first_step_s = 0;
  int64_t gradient_bytes = 0;
  std::vector<int64_t> bucket_bytes;
  double hidden_fraction() const { return 1.0 - exposed_s / allreduce_s; }
};

DdpFigures run_ddp(const Workload& w, double bucket_cap_mb, const std::string& storage, int round) {
  train::TorchTrainer trainer(ddp_loop, trainer_options("ddp_" + std::to_string(round), storage, 0,
                                                        {{"warmup_steps", w.warmup_steps},
                                                         {"timed_steps", w.timed_steps},
                                                         {"allreduce_reps", w.allreduce_reps},
                                                         {"bucket_cap_mb", bucket_cap_mb}}));
  const double fit_called = unix_seconds();
  train::Result r = trainer.fit();
  require_ok(r, "the DDP run");
  DdpFigures f;
  f.steps_per_s = mean(per_rank(r, "steps_per_s"));
  f.exposed_s = mean(per_rank(r, "exposed_sync_s_per_step"));
  f.allreduce_s = mean(per_rank(r, "allreduce_s"));
  f.no_sync_steps_per_s = mean(per_rank(r, "no_sync_steps_per_s"));
  const auto first_steps = per_rank(r, "first_step_end_unix_s");
  f.first_step_s = *std::max_element(first_steps.begin(), first_steps.end()) - fit_called;
  f.gradient_bytes = static_cast<int64_t>(per_rank(r, "gradient_bytes")[0]);
  f.bucket_bytes = r.metrics.value("bucket_bytes", std::vector<int64_t>{});
  return f;
}

/// Seconds from rank 1's SIGKILL to the restarted group's first step, and the step the
/// restart resumed from (-1: no checkpoint had been committed).
struct ResumeFigures {
  double seconds = 0;
  int resumed_from_step = -1;
};

ResumeFigures run_resume(const Workload& w, const std::string& storage) {
  gantry::kv::del(kKillKey);
  train::TorchTrainer trainer(resume_loop, trainer_options("resume", storage, 1,
                                                           {{"checkpoint_step", w.resume_checkpoint_step},
                                                            {"kill_delay_s", w.resume_kill_delay_s},
                                                            {"steps_after", w.resume_steps_after}}));
  train::Result r = trainer.fit();
  require_ok(r, "the kill/resume run");
  auto killed = gantry::kv::get(kKillKey);
  if (!killed) throw std::runtime_error("rank 1 did not record its kill");
  if (r.metrics.value("restart_count", 0) != 1) throw std::runtime_error("the run did not restart exactly once");
  const auto firsts = per_rank(r, "resume_first_step_end_unix_s");
  return {.seconds = *std::max_element(firsts.begin(), firsts.end()) - std::stod(*killed),
          .resumed_from_step = r.metrics.value("resumed_from_step", -1)};
}

// ---- output ----

// The BLAS library this process loaded, from its memory map.
std::string loaded_blas() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    std::string path = line.substr(slash);
    if (fs::path(path).filename().string().find("blas") != std::string::npos) {
      std::error_code ec;
      fs::path real = fs::canonical(path, ec);
      return ec ? path : real.string();
    }
  }
  return "none found";
}

void print_header(const Workload& w, bool quick, double bucket_cap_mb) {
  char date[64];
  std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
  bool openblas_call = dlsym(RTLD_DEFAULT, "openblas_set_num_threads") != nullptr;
  std::cout << "# gantry_train_bench" << (quick ? " --quick" : "") << "  " << date << "  commit " << gantry::bench::source_commit()
            << "\n"
            << "# setup: MLP " << kInputs << "-" << kHidden << "-" << kHidden << "-" << kClasses << " (ReLU), batch "
            << kBatch << " per rank of random data, SGD lr " << kLearningRate << ", CPU, " << kWorld
            << " ranks of one thread each; " << std::thread::hardware_concurrency() << " hardware threads\n"
            << "# gantry DDP: TorchTrainer, resources_per_worker CPU 1, bucket_cap_mb " << bucket_cap_mb << "\n"
            << "# steps/s per rank over " << w.timed_steps << " steps after " << w.warmup_steps
            << " warm-up steps; figures are medians over " << w.rounds << " round(s)\n"
            << "# blas: " << loaded_blas() << (openblas_call ? " (openblas_set_num_threads(1) in every rank)" : "")
            << std::endl;
}

void print_figure(const std::string& name, double value) {
  std::cout << name << " " << std::setprecision(4) << std::fixed << value << std::endl;
}

std::string fixed(double value, int digits) {
  std::ostringstream out;
  out << std::setprecision(digits) << std::fixed << value;
  return out.str();
}

/// One round's figures, as far as they were measured.
struct Round {
  std::optional<double> independent, c10d;
  std::optional<DdpFigures> ddp;
};

void print_round(int index, const Round& r) {
  auto text = [](const std::optional<double>& v) { return v ? fixed(*v, 1) : std::string("failed"); };
  std::cout << "# round " << index + 1 << ": independent " << text(r.independent) << ", c10d_gloo " << text(r.c10d)
            << ", ddp " << (r.ddp ? fixed(r.ddp->steps_per_s, 1) : "failed") << " steps/s";
  if (r.ddp) {
    if (r.independent) std::cout << "; ddp/independent " << fixed(r.ddp->steps_per_s / *r.independent, 2);
    if (r.c10d) std::cout << ", ddp/c10d_gloo " << fixed(r.ddp->steps_per_s / *r.c10d, 2);
    std::cout << "; ddp exposed sync " << fixed(r.ddp->exposed_s * 1e3, 2) << " ms/step, blocking allreduce "
              << fixed(r.ddp->allreduce_s * 1e3, 2) << " ms; under no_sync " << fixed(r.ddp->no_sync_steps_per_s, 1)
              << " steps/s; first step " << fixed(r.ddp->first_step_s, 3) << " s";
  }
  std::cout << std::endl;
}

// Medians over the rounds that have the figure.
void print_summary(const std::vector<Round>& rounds, const std::optional<ResumeFigures>& resume) {
  std::vector<double> independent, c10d, ddp, hidden, first_step, exposed, allreduce, no_sync, vs_independent, vs_c10d;
  std::optional<DdpFigures> any_ddp;
  for (const Round& r : rounds) {
    if (r.independent) independent.push_back(*r.independent);
    if (r.c10d) c10d.push_back(*r.c10d);
    if (!r.ddp) continue;
    any_ddp = r.ddp;
    ddp.push_back(r.ddp->steps_per_s);
    hidden.push_back(r.ddp->hidden_fraction());
    first_step.push_back(r.ddp->first_step_s);
    exposed.push_back(r.ddp->exposed_s);
    allreduce.push_back(r.ddp->allreduce_s);
    no_sync.push_back(r.ddp->no_sync_steps_per_s);
    if (r.independent) vs_independent.push_back(r.ddp->steps_per_s / *r.independent);
    if (r.c10d) vs_c10d.push_back(r.ddp->steps_per_s / *r.c10d);
  }
  if (!ddp.empty()) print_figure("train_ddp_steps_per_s", median(ddp));
  if (!independent.empty()) print_figure("train_independent_steps_per_s", median(independent));
  if (!c10d.empty()) print_figure("train_c10d_gloo_steps_per_s", median(c10d));
  if (!hidden.empty()) print_figure("train_sync_hidden_fraction", median(hidden));
  if (!first_step.empty()) print_figure("train_first_step_s", median(first_step));
  if (resume) print_figure("train_resume_after_kill_s", resume->seconds);
  if (any_ddp) {
    std::cout << "# ddp exposed sync per step " << fixed(median(exposed) * 1e3, 3)
              << " ms; blocking allreduce of all gradients (" << any_ddp->gradient_bytes << " bytes, float32, avg) "
              << fixed(median(allreduce) * 1e3, 3) << " ms; hidden fraction = 1 - exposed / blocking\n";
    std::cout << "# ddp buckets in launch order (bytes):";
    for (int64_t b : any_ddp->bucket_bytes) std::cout << " " << b;
    std::cout << "\n# gantry workers under no_sync (no gradient synchronisation) " << fixed(median(no_sync), 1)
              << " steps/s\n";
  }
  if (!vs_independent.empty())
    std::cout << "# ratio ddp/independent " << fixed(median(vs_independent), 2) << " (target >= 0.8)\n";
  if (!vs_c10d.empty()) std::cout << "# ratio ddp/c10d_gloo " << fixed(median(vs_c10d), 2) << " (target >= 1.5)\n";
  if (resume) {
    std::cout << "# resume after kill: MLP 64-64-64-10, "
              << (resume->resumed_from_step >= 0
                      ? "restarted from the checkpoint of step " + std::to_string(resume->resumed_from_step)
                      : std::string("restarted without a checkpoint (none was committed before the kill)"))
              << "\n";
  }
  std::cout.flush();
}

// Runs one measurement; on failure says which and returns false.
bool measure(const std::string& what, const std::function<void()>& fn) {
  try {
    fn();
    return true;
  } catch (const std::exception& e) {
    std::cerr << "train_bench: " << what << ": " << e.what() << std::endl;
    return false;
  }
}

int usage() {
  std::cerr << "usage: gantry_train_bench [--quick] [--bucket-cap-mb MB]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Train workers are this executable started by the node agent: they serve here.
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  bool quick = false;
  double bucket_cap_mb = train::DdpOptions{}.bucket_cap_mb;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--bucket-cap-mb" && i + 1 < argc) {
      try {
        bucket_cap_mb = std::stod(argv[++i]);
      } catch (const std::exception&) {
        return usage();
      }
      if (!(bucket_cap_mb > 0)) return usage();
    } else {
      return usage();
    }
  }
  const Workload w = workload_for(quick);
  print_header(w, quick, bucket_cap_mb);

  // torchrun's setting for one thread per rank, for the baselines' processes (OpenBLAS
  // reads it only when loaded, hence also use_one_thread()).
  setenv("OMP_NUM_THREADS", "1", 1);
  setenv("OPENBLAS_NUM_THREADS", "1", 1);
  std::optional<BaselineLauncher> launcher;
  try {
    launcher.emplace(w);
  } catch (const std::exception& e) {
    std::cerr << "train_bench: " << e.what() << std::endl;
    return 1;
  }
  gantry::init(argc, argv, {.num_cpus = kWorld});

  const fs::path storage = fs::temp_directory_path() / ("gantry_train_bench." + std::to_string(getpid()));
  bool ok = true;
  std::vector<Round> rounds;
  for (int i = 0; i < w.rounds; ++i) {
    Round r;
    // Each round starts with another of the three, so that none always runs first.
    const std::function<void()> steps[] = {
        [&] { ok &= measure("independent processes", [&] { r.independent = launcher->run(Baseline::kIndependent); }); },
        [&] { ok &= measure("c10d ProcessGroupGloo", [&] { r.c10d = launcher->run(Baseline::kC10dGloo); }); },
        [&] { ok &= measure("gantry DDP", [&] { r.ddp = run_ddp(w, bucket_cap_mb, storage.string(), i); }); },
    };
    for (int k = 0; k < 3; ++k) steps[(i + k) % 3]();
    print_round(i, r);
    rounds.push_back(std::move(r));
  }
  launcher.reset();
  std::optional<ResumeFigures> resume;
  ok &= measure("resume after kill", [&] { resume = run_resume(w, storage.string()); });
  print_summary(rounds, resume);

  std::error_code ec;
  fs::remove_all(storage, ec);
  gantry::shutdown();
  return ok ? 0 : 1;
}
