// Train on the embedded cluster: real worker processes, real collectives, real files.
// The test binary is also the workers' executable, so the loops are registered here.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "gantry/kv.h"
#include "gantry/train.h"
#include "parameter_hash.h"

namespace train = gantry::train;
using gantry::train_test::parameter_hash;
namespace fs = std::filesystem;

namespace {

std::string storage_dir() {
  static std::string dir = [] {
    fs::path p = fs::temp_directory_path() / ("gantry-train-test-" + std::to_string(getpid()));
    fs::create_directories(p);
    return p.string();
  }();
  return dir;
}

struct SmallNet : torch::nn::Module {
  SmallNet() {
    a = register_module("a", torch::nn::Linear(8, 16));
    b = register_module("b", torch::nn::Linear(16, 2));
    unused = register_module("unused", torch::nn::Linear(16, 2));
  }
  torch::Tensor forward(torch::Tensor x, bool branch = false) {
    x = torch::tanh(a->forward(x));
    return branch ? unused->forward(x) : b->forward(x);
  }
  torch::nn::Linear a{nullptr}, b{nullptr}, unused{nullptr};
};

// 256 samples of 8 features with a learnable label.
class Blobs : public torch::data::datasets::Dataset<Blobs> {
 public:
  Blobs() {
    torch::Generator gen = torch::make_generator<torch::CPUGeneratorImpl>(5);
    x_ = torch::randn({256, 8}, gen);
    y_ = (x_.sum(1) > 0).to(torch::kLong);
  }
  torch::data::Example<> get(size_t i) override {
    return {x_[static_cast<int64_t>(i)], y_[static_cast<int64_t>(i)]};
  }
  torch::optional<size_t> size() const override { return 256; }

 private:
  torch::Tensor x_, y_;
};

train::Json env_snapshot() {
  train::Json out;
  for (const char* name : {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                           "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
                           "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}) {
    const char* v = std::getenv(name);
    out[name] = v != nullptr ? v : "";
  }
  return out;
}

// --- loops --------------------------------------------------------------------------

void env_loop(train::TrainContext& ctx) {
  train::Json m = env_snapshot();
  m["world_rank"] = ctx.world_rank();
  m["local_rank"] = ctx.local_rank();
  m["world_size"] = ctx.world_size();
  m["node_rank"] = ctx.node_rank();
  m["device"] = ctx.device().str();
  m["run_name"] = ctx.run_name();
  m["lr"] = ctx.config().get<double>("lr");
  ctx.report(m);
}
GANTRY_TRAIN_LOOP(env_loop);

// Each rank trains on its own random batches; rank 0 also keeps a single-process
// reference trained on every rank's batches at once.
void equal_loop(train::TrainContext& ctx) {
  torch::manual_seed(100 + ctx.world_rank());  // different initial weights: prepare_model must fix that
  auto model = std::make_shared<SmallNet>();
  auto reference = std::make_shared<SmallNet>();
  auto ddp = ctx.prepare_model(model, {.bucket_cap_mb = 0.0005, .find_unused_parameters = true});
  {
    torch::NoGradGuard no_grad;
    auto src = model->parameters();
    auto dst = reference->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  if (ctx.config().get<bool>("reload", false)) {
    // LibTorch's own Module::load swaps the parameters' storage (set_), which gives them
    // new gradient accumulators: the wrapper must follow.
    torch::serialize::OutputArchive out;
    model->save(out);
    std::ostringstream bytes;
    out.save_to(bytes);
    std::istringstream in_bytes(bytes.str());
    torch::serialize::InputArchive in;
    in.load_from(in_bytes);
    model->load(in);
  }
  torch::optim::SGD opt(model->parameters(), 0.1);
  torch::optim::SGD ref_opt(reference->parameters(), 0.1);
  int world = ctx.world_size();
  bool accumulate = ctx.config().get<bool>("no_sync", false);
  for (int step = 0; step < 20; ++step) {
    auto batch = [&](int rank, int micro) {
      torch::Generator gen = torch::make_generator<torch::CPUGeneratorImpl>(1000 * step + 10 * rank + micro);
      return std::make_pair(torch::randn({16, 8}, gen), torch::randint(0, 2, {16}, gen));
    };
    opt.zero_grad();
    // Rank 1 sometimes takes the other branch: its unused parameters get no gradient.
    bool branch = ctx.world_rank() == 1 && step % 3 == 0;
    if (accumulate) {
      auto guard = ddp->no_sync();
      auto [x, y] = batch(ctx.world_rank(), 1);
      torch::nn::functional::cross_entropy(model->forward(x, branch), y).backward();
    }
    auto [x, y] = batch(ctx.world_rank(), 0);
    torch::nn::functional::cross_entropy(model->forward(x, branch), y).backward();
    opt.step();
    if (ctx.world_rank() == 0) {
      ref_opt.zero_grad();
      for (int r = 0; r < world; ++r) {
        bool b = r == 1 && step % 3 == 0;
        for (int micro = 0; micro < (accumulate ? 2 : 1); ++micro) {
          auto [rx, ry] = batch(r, micro);
          (torch::nn::functional::cross_entropy(reference->forward(rx, b), ry) / world).backward();
        }
      }
      // Parameters no rank used this step have no reference gradient; DDP gives zeros.
      for (auto& p : reference->parameters())
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      ref_opt.step();
    }
  }
  double max_diff = 0;
  if (ctx.world_rank() == 0) {
    auto a = model->parameters();
    auto b = reference->parameters();
    for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, (a[i] - b[i]).abs().max().item<double>());
  }
  auto stats = ddp->stats();
  ctx.report({{"hash", parameter_hash(*model)},
              {"max_diff_from_reference", max_diff},
              {"buckets", ddp->buckets().size()},
              {"synced", stats.synced_backwards}});
}
GANTRY_TRAIN_LOOP(equal_loop);

void unused_loop(train::TrainContext& ctx) {
  auto model = std::make_shared<SmallNet>();
  ctx.prepare_model(model);  // find_unused_parameters off
  auto x = torch::randn({4, 8});
  model->forward(x).sum().backward();  // `unused` gets no gradient
  ctx.report({{"reached", true}});
}
GANTRY_TRAIN_LOOP(unused_loop);

void score_loop(train::TrainContext& ctx) {
  auto model = std::make_shared<SmallNet>();
  ctx.prepare_model(model);
  torch::optim::SGD opt(model->parameters(), 0.1);
  std::vector<double> losses = {5, 3, 4, 1, 2};
  for (int epoch = 0; epoch < static_cast<int>(losses.size()); ++epoch) {
    ctx.report({{"epoch", epoch}, {"loss", losses[epoch]}}, train::Checkpoint::from_model(*model, opt, epoch));
  }
}
GANTRY_TRAIN_LOOP(score_loop);

// Trains on Blobs with a checkpoint per epoch; with "kill_at_epoch", rank 1 SIGKILLs
// itself in the middle of that epoch, on the first attempt only.
void resume_loop(train::TrainContext& ctx) {
  torch::manual_seed(3);
  auto model = std::make_shared<SmallNet>();
  auto ddp = ctx.prepare_model(model, {.find_unused_parameters = true});
  auto loader = ctx.prepare_data(Blobs().map(torch::data::transforms::Stack<>()), {.batch_size = 16, .shuffle = true, .seed = 9});
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  int first = 0;
  if (auto ck = ctx.checkpoint()) first = ck->load(*model, opt) + 1;
  int kill_at = ctx.config().get<int>("kill_at_epoch", -1);
  int epochs = ctx.config().get<int>("epochs");
  int64_t delay_ms = ctx.config().get<int64_t>("epoch_delay_ms", 0);
  for (int epoch = first; epoch < epochs; ++epoch) {
    int batch_no = 0;
    double total = 0;
    for (auto& batch : *loader) {
      if (epoch == kill_at && batch_no == 3 && ctx.world_rank() == 1 && ctx.restart_count() == 0) raise(SIGKILL);
      opt.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(model->forward(batch.data), batch.target);
      loss.backward();
      opt.step();
      total += loss.item<double>();
      ++batch_no;
    }
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ctx.report({{"epoch", epoch}, {"loss", total / batch_no}, {"loader_epoch", loader->epoch()},
                {"hash", parameter_hash(*model)}, {"restart_count", ctx.restart_count()}},
               train::Checkpoint::from_model(*model, opt, epoch));
  }
}
GANTRY_TRAIN_LOOP(resume_loop);

void throwing_loop(train::TrainContext& ctx) {
  if (ctx.world_rank() == 1) throw std::runtime_error("rank one is broken on purpose");
  ctx.report({{"step", 0}});
}
GANTRY_TRAIN_LOOP(throwing_loop);

void silent_rank_loop(train::TrainContext& ctx) {
  ctx.report({{"step", 0}});
  if (ctx.world_rank() != 1) ctx.report({{"step", 1}});  // rank 1 never makes the second report
}
GANTRY_TRAIN_LOOP(silent_rank_loop);

// CUDA tensors (a CUDA LibTorch and GPUs): the buckets live on the device and are
// averaged through NCCL.
void cuda_loop(train::TrainContext& ctx) {
  torch::manual_seed(ctx.world_rank());
  auto model = std::make_shared<SmallNet>();
  auto ddp = ctx.prepare_model(model, {.find_unused_parameters = true});
  torch::optim::SGD opt(model->parameters(), 0.1);
  for (int step = 0; step < 10; ++step) {
    torch::Generator gen = torch::make_generator<torch::CPUGeneratorImpl>(100 * step + ctx.world_rank());
    opt.zero_grad();
    auto x = torch::randn({16, 8}, gen).to(ctx.device());
    auto y = torch::randint(0, 2, {16}, gen).to(ctx.device());
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    opt.step();
  }
  ctx.report({{"hash", parameter_hash(*model)}, {"device", ctx.device().str()}});
}
GANTRY_TRAIN_LOOP(cuda_loop);

// Many quick reports of known values: what the dashboard's record must show.
void metrics_loop(train::TrainContext& ctx) {
  int reports = ctx.config().get<int>("reports");
  for (int i = 0; i < reports; ++i) {
    ctx.report({{"step", i}, {"loss", 1000 - i}, {"samples_per_second", 10 * i}});
  }
}
GANTRY_TRAIN_LOOP(metrics_loop);

// The record Train's driver published for the dashboard about run `name`.
train::Json dashboard_record(const std::string& name) {
  std::optional<std::string> text = gantry::kv::get("gantry.dashboard/train/" + name, {.cluster = true});
  if (!text.has_value()) {
    ADD_FAILURE() << "run " << name << " published no dashboard record";
    return train::Json::object();
  }
  return train::Json::parse(*text);
}

train::TrainerOptions options_for(const std::string& name, int workers) {
  train::TrainerOptions o;
  o.scaling.num_workers = workers;
  o.scaling.resources_per_worker = {{"CPU", 1}};
  o.run.name = name;
  o.run.storage_path = storage_dir();
  o.run.verbose = 0;
  return o;
}

class Cluster : public ::testing::Environment {
 public:
  void SetUp() override { gantry::init({.num_cpus = 4}); }
  void TearDown() override {
    gantry::shutdown();
    std::error_code ec;
    fs::remove_all(storage_dir(), ec);
  }
};

}  // namespace

TEST(Train, WorkersGetTorchrunsEnvironmentAndRanks) {
  auto o = options_for("env", 3);
  o.config = {{"lr", 0.25}};
  train::Result r = train::TorchTrainer(env_loop, o).fit();
  ASSERT_TRUE(r.ok()) << r.error->message;
  ASSERT_EQ(r.worker_metrics.size(), 3u);
  std::string port = r.worker_metrics[0][0]["MASTER_PORT"];
  for (int rank = 0; rank < 3; ++rank) {
    const train::Json& m = r.worker_metrics[rank][0];
    EXPECT_EQ(m["RANK"], std::to_string(rank));
    EXPECT_EQ(m["world_rank"], rank);
    EXPECT_EQ(m["LOCAL_RANK"], std::to_string(rank));  // one node: local ranks are world ranks
    EXPECT_EQ(m["WORLD_SIZE"], "3");
    EXPECT_EQ(m["LOCAL_WORLD_SIZE"], "3");
    EXPECT_EQ(m["NODE_RANK"], "0");
    EXPECT_EQ(m["GROUP_RANK"], "0");
    EXPECT_EQ(m["MASTER_ADDR"], "127.0.0.1");
    EXPECT_EQ(m["MASTER_PORT"], port);
    EXPECT_GT(std::stoi(port), 0);
    EXPECT_EQ(m["TORCHELASTIC_RESTART_COUNT"], "0");
    EXPECT_EQ(m["TORCHELASTIC_MAX_RESTARTS"], "0");
    EXPECT_FALSE(m["TORCHELASTIC_RUN_ID"].get<std::string>().empty());
    EXPECT_EQ(m["OMP_NUM_THREADS"], "1");
    EXPECT_EQ(m["OPENBLAS_NUM_THREADS"], "1");
    EXPECT_EQ(m["device"], "cpu");
    EXPECT_EQ(m["lr"], 0.25);
    EXPECT_EQ(m["run_name"], "env");
  }
  EXPECT_EQ(r.metrics["RANK"], "0");  // the run's metrics are rank 0's
  EXPECT_TRUE(fs::exists(fs::path(r.path) / "result.json"));
  EXPECT_TRUE(fs::exists(fs::path(r.path) / "worker_metrics.jsonl"));
}

TEST(Train, ParametersStayBitwiseEqualAndMatchOneProcessTraining) {
  for (int variant = 0; variant < 3; ++variant) {
    bool no_sync = variant == 1, reload = variant == 2;
    SCOPED_TRACE(no_sync ? "with no_sync accumulation" : reload ? "after Module::load" : "one backward per step");
    auto o = options_for("equal" + std::to_string(variant), 3);
    o.config = {{"no_sync", no_sync}, {"reload", reload}};
    train::Result r = train::TorchTrainer(equal_loop, o).fit();
    ASSERT_TRUE(r.ok()) << r.error->message;
    std::string hash = r.worker_metrics[0][0]["hash"];
    for (int rank = 1; rank < 3; ++rank) EXPECT_EQ(r.worker_metrics[rank][0]["hash"], hash) << "rank " << rank;
    EXPECT_LT(r.metrics["max_diff_from_reference"].get<double>(), 1e-5);
    EXPECT_GT(r.metrics["buckets"].get<int>(), 1);  // a tiny cap: several buckets
    EXPECT_EQ(r.metrics["synced"].get<int>(), 20);
  }
}

TEST(Train, AParameterWithoutGradientIsAnErrorNamingIt) {
  auto o = options_for("unused", 2);
  train::Result r = train::TorchTrainer(unused_loop, o).fit();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error->message.find("unused.weight"), std::string::npos) << r.error->message;
  EXPECT_NE(r.error->message.find("find_unused_parameters"), std::string::npos) << r.error->message;
}

TEST(Train, CheckpointsAreKeptByScore) {
  auto o = options_for("score", 2);
  o.run.checkpoint = {.num_to_keep = 2, .score_attribute = "loss", .score_order = train::kMin};
  train::Result r = train::TorchTrainer(score_loop, o).fit();
  ASSERT_TRUE(r.ok()) << r.error->message;
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(r.path))
    if (e.path().filename().string().rfind("checkpoint_", 0) == 0) dirs.push_back(e.path().filename().string());
  std::sort(dirs.begin(), dirs.end());
  // Losses 5, 3, 4, 1, 2: the best (1, index 3) and the latest (index 4) stay.
  EXPECT_EQ(dirs, (std::vector<std::string>{"checkpoint_000003", "checkpoint_000004"}));
  ASSERT_TRUE(r.checkpoint.has_value());
  EXPECT_EQ(fs::path(r.checkpoint->path()).filename(), "checkpoint_000004");
  EXPECT_EQ(r.checkpoint->epoch(), 4);
  EXPECT_EQ(r.checkpoint->metadata()["metrics"]["loss"], 2);
  EXPECT_TRUE(fs::exists(fs::path(r.checkpoint->path()) / "model.pt"));
  EXPECT_TRUE(fs::exists(fs::path(r.checkpoint->path()) / "optimizer.pt"));
  ASSERT_EQ(r.best_checkpoints.size(), 2u);
  EXPECT_EQ(r.metrics_history.size(), 5u);

  // The dashboard shows the checkpoints kept, with the report each came with.
  train::Json record = dashboard_record("score");
  EXPECT_EQ(record["state"], "finished");
  EXPECT_EQ(record["iterations"], 5);
  ASSERT_EQ(record["checkpoints"].size(), 2u) << record.dump();
  EXPECT_EQ(record["checkpoints"][0]["path"], (fs::path(r.path) / "checkpoint_000003").string());
  EXPECT_EQ(record["checkpoints"][0]["iteration"], 4);
  EXPECT_EQ(record["checkpoints"][0]["metrics"]["loss"], 1);
  EXPECT_EQ(record["checkpoints"][1]["path"], (fs::path(r.path) / "checkpoint_000004").string());
  EXPECT_EQ(record["checkpoints"][1]["iteration"], 5);
  EXPECT_EQ(record["checkpoints"][1]["metrics"]["loss"], 2);
  ASSERT_EQ(record["workers"].size(), 2u);
  EXPECT_EQ(record["workers"][0]["rank"], 0);
  EXPECT_EQ(record["workers"][1]["rank"], 1);
  EXPECT_NE(record["workers"][0]["pid"], record["workers"][1]["pid"]);
}

TEST(Train, PublishesItsRecordForTheDashboard) {
  auto o = options_for("dashboard", 1);
  o.config = {{"reports", 600}};
  train::Result r = train::TorchTrainer(metrics_loop, o).fit();
  ASSERT_TRUE(r.ok()) << r.error->message;
  train::Json j = dashboard_record("dashboard");
  EXPECT_EQ(j["kind"], "train");
  EXPECT_EQ(j["name"], "dashboard");
  EXPECT_EQ(j["storage_path"], r.path);
  EXPECT_EQ(j["state"], "finished");
  EXPECT_EQ(j["job_id"], gantry::runtime_context().job_id);
  EXPECT_EQ(j["num_workers"], 1);
  EXPECT_EQ(j["use_gpu"], false);
  EXPECT_EQ(j["failures"], 0);
  EXPECT_TRUE(j["error"].is_null());
  EXPECT_LE(j["started"].get<double>(), j["updated"].get<double>());
  ASSERT_EQ(j["workers"].size(), 1u);
  EXPECT_EQ(j["workers"][0]["rank"], 0);
  EXPECT_EQ(j["workers"][0]["node_id"], gantry::nodes().at(0).node_id);
  EXPECT_GT(j["workers"][0]["pid"].get<int>(), 0);
  EXPECT_NE(j["workers"][0]["pid"].get<int>(), getpid()) << "the worker's pid, not the driver's";
  EXPECT_EQ(j["workers"][0]["gpu_ids"], train::Json::array());
  EXPECT_EQ(j["iterations"], 600);
  EXPECT_EQ(j["last_metrics"], (train::Json{{"step", 599}, {"loss", 401}, {"samples_per_second", 5990}}));
  EXPECT_EQ(j["metric_names"], (train::Json::array({"loss", "samples_per_second", "step"})));
  EXPECT_EQ(j["samples_per_second"], 5990);
  EXPECT_TRUE(j["checkpoints"].empty());
  // 600 reports thinned evenly to at most 500: the first 500, halved to every other one
  // when full, then every other one of the rest.
  const train::Json& history = j["history"];
  ASSERT_EQ(history.size(), 300u);
  for (size_t k = 0; k < history.size(); ++k) {
    int iteration = history[k]["iteration"];
    EXPECT_EQ(iteration, static_cast<int>(2 * k + 1));
    EXPECT_EQ(history[k]["metrics"]["step"], iteration - 1);
    EXPECT_EQ(history[k]["metrics"]["loss"], 1000 - (iteration - 1));
    EXPECT_GE(history[k]["time"].get<double>(), j["started"].get<double>());
  }

  // A run on_report ends is stopped, not finished.
  auto s = options_for("dashboard_stopped", 1);
  s.config = {{"reports", 600}};
  s.run.on_report = [](const train::Json& m, const auto&) { return m["step"].get<int>() < 2; };
  train::Result stopped = train::TorchTrainer(metrics_loop, s).fit();
  ASSERT_TRUE(stopped.ok()) << stopped.error->message;
  train::Json k = dashboard_record("dashboard_stopped");
  EXPECT_EQ(k["state"], "stopped");
  EXPECT_GE(k["iterations"].get<int>(), 3);
  EXPECT_EQ(k["iterations"].get<size_t>(), stopped.metrics_history.size());
  EXPECT_EQ(k["last_metrics"], stopped.metrics);
}

TEST(Train, AKilledWorkerResumesToTheSameFinalWeights) {
  auto o = options_for("uninterrupted", 2);
  o.config = {{"epochs", 5}};
  train::Result clean = train::TorchTrainer(resume_loop, o).fit();
  ASSERT_TRUE(clean.ok()) << clean.error->message;

  auto k = options_for("killed", 2);
  k.config = {{"epochs", 5}, {"kill_at_epoch", 2}};
  k.run.failure.max_failures = 1;
  train::Result killed = train::TorchTrainer(resume_loop, k).fit();
  ASSERT_TRUE(killed.ok()) << killed.error->message;
  EXPECT_EQ(killed.metrics["restart_count"], 1);
  EXPECT_EQ(killed.metrics["epoch"], 4);
  EXPECT_EQ(killed.metrics["hash"], clean.metrics["hash"]);

  // The restarted loaders continued at the checkpoint's epoch + 1 without being told.
  std::vector<int> epochs;
  for (const auto& m : killed.metrics_history) epochs.push_back(m["loader_epoch"]);
  EXPECT_EQ(epochs, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Train, MaxFailuresSpentGivesTheLastError) {
  auto o = options_for("throwing", 2);
  o.run.failure.max_failures = 1;
  train::Result r = train::TorchTrainer(throwing_loop, o).fit();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error->rank, 1);
  EXPECT_EQ(r.error->attempts, 2);
  EXPECT_FALSE(r.error->node_id.empty());
  EXPECT_NE(r.error->message.find("rank one is broken on purpose"), std::string::npos) << r.error->message;

  train::Json record = dashboard_record("throwing");
  EXPECT_EQ(record["state"], "failed");
  EXPECT_EQ(record["failures"], 2);
  EXPECT_EQ(record["error"], r.error->message);
}

TEST(Train, ARankThatStopsReportingIsNamed) {
  auto o = options_for("silent", 2);
  o.run.report_timeout = std::chrono::seconds(2);
  train::Result r = train::TorchTrainer(silent_rank_loop, o).fit();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error->message.find("rank(s) 1 did not report"), std::string::npos) << r.error->message;
}

TEST(Train, BadOptionsAreClearErrors) {
  auto o = options_for("bad", 0);
  EXPECT_THROW(train::TorchTrainer(env_loop, o), gantry::Error);
  o = options_for("bad", 2);
  o.scaling.num_workers = {3, 2};
  EXPECT_THROW(train::TorchTrainer(env_loop, o), gantry::Error);
  o = options_for("bad", 2);
  o.scaling.resources_per_worker = {{"CPU", 64}};  // no node has 64 CPUs
  EXPECT_THROW(train::TorchTrainer(env_loop, o).fit(), gantry::InfeasibleError);
  auto not_registered = [](train::TrainContext&) {};
  EXPECT_THROW(train::TorchTrainer(+not_registered, options_for("bad", 1)), gantry::Error);
}

TEST(Train, RestoreContinuesARunWhoseDriverWasKilled) {
  std::string dir = storage_dir() + "/restored";
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execl("/proc/self/exe", "train_test", "--driver-for-restore", storage_dir().c_str(), nullptr);
    _exit(127);
  }
  // Kill the driver once its run has committed two checkpoints.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(dir + "/checkpoint_000001") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(fs::exists(dir + "/checkpoint_000001")) << "the driver made no checkpoints in time";

  train::TorchTrainer trainer = train::TorchTrainer::restore(dir, resume_loop);
  EXPECT_EQ(trainer.options().config.get<int>("epochs"), 6);
  train::Result r = trainer.fit();
  ASSERT_TRUE(r.ok()) << r.error->message;
  EXPECT_EQ(r.path, dir);
  EXPECT_EQ(r.metrics["epoch"], 5);
  // The restored run went on after the last checkpoint: epochs 0..5 each reported, the
  // ones after the kill once more at most.
  std::ifstream results(dir + "/result.json");
  std::string line;
  std::vector<int> epochs;
  while (std::getline(results, line)) epochs.push_back(train::Json::parse(line)["epoch"]);
  ASSERT_GE(epochs.size(), 6u);
  EXPECT_EQ(epochs.back(), 5);
  EXPECT_EQ(epochs.front(), 0);
  EXPECT_LE(epochs.size(), 8u);  // no restart from scratch
}

TEST(Train, CudaTensorsAreAveragedOnTheDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "needs a LibTorch built with CUDA and a GPU (Debian's is CPU-only)";
  int workers = std::min<int>(2, static_cast<int>(torch::cuda::device_count()));
  auto o = options_for("cuda", workers);
  o.scaling.use_gpu = true;
  train::Result r = train::TorchTrainer(cuda_loop, o).fit();
  ASSERT_TRUE(r.ok()) << r.error->message;
  for (int rank = 0; rank < workers; ++rank) {
    EXPECT_EQ(r.worker_metrics[rank][0]["device"], "cuda:0");
    EXPECT_EQ(r.worker_metrics[rank][0]["hash"], r.worker_metrics[0][0]["hash"]);
  }
}

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  if (argc == 3 && std::string(argv[1]) == "--driver-for-restore") {
    // The driver the restore test kills: a slow run of six epochs.
    gantry::init({.num_cpus = 4});
    auto o = options_for("restored", 2);
    o.run.storage_path = argv[2];
    o.config = {{"epochs", 6}, {"epoch_delay_ms", 400}};
    train::TorchTrainer(resume_loop, o).fit();
    gantry::shutdown();
    return 0;
  }
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new Cluster);
  return RUN_ALL_TESTS();
}
