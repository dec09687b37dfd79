// Sweeps on the embedded cluster (4 CPUs, 2 logical GPUs): trials as actors, schedulers
// stopping and cloning them, failures, restore after a killed driver, the files and the
// status command. The binary is its own workers (gantry::init in main).

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "gantry/gantry.h"
#include "gantry/kv.h"
#include "gantry/tune.h"
#include "support/shell.h"

namespace fs = std::filesystem;
namespace tune = gantry::tune;
using tune::Json;

namespace {

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

fs::path storage() {
  static fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("gantry_tune_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::vector<Json> read_events(const fs::path& experiment) {
  std::vector<Json> out;
  std::ifstream in(experiment / "experiment_state.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(Json::parse(line));
  }
  return out;
}

size_t count_lines(const fs::path& file) {
  std::ifstream in(file);
  size_t n = 0;
  std::string line;
  while (std::getline(in, line)) ++n;
  return n;
}

// A learning curve in closed form: loss falls towards (x - 0.3)^2 as steps go by.
void curve(tune::TrialContext& t) {
  double x = t.config().get<double>("x");
  int steps = t.config().get<int>("steps", 20);
  int start = 0;
  if (auto ck = t.checkpoint()) start = ck->read<int>("step") + 1;
  for (int step = start; step < steps; ++step) {
    double loss = (x - 0.3) * (x - 0.3) + 1.0 / (step + 1);
    if (t.config().get<bool>("diverge", false)) loss = std::nan("");
    t.report({{"loss", loss}, {"step", step}}, tune::Checkpoint::with("step", step));
  }
}
GANTRY_TRAINABLE(curve);

void trivial(tune::TrialContext& t) {
  t.report({{"score", t.config().get<double>("a") * 2}, {"pid", ::getpid()}});
}
GANTRY_TRAINABLE(trivial);

// Throws at step 3 of its first attempt ("fail_once") or always ("fail_always").
void flaky(tune::TrialContext& t) {
  int start = 0;
  if (auto ck = t.checkpoint()) start = ck->read<int>("step") + 1;
  for (int step = start; step < 6; ++step) {
    if (step == 3 && t.config().get<std::string>("kind") == "fail_always") {
      throw std::invalid_argument("bad batch at step 3");
    }
    if (step == 3 && start == 0 && t.config().get<std::string>("kind") == "fail_once") {
      throw std::runtime_error("transient failure");
    }
    t.report({{"step", step}, {"resumed_at", start}}, tune::Checkpoint::with("step", step));
  }
}
GANTRY_TRAINABLE(flaky);

// Fails at step 2 until the file named by "fixed_when" exists (a bug fixed between the
// sweep and its restore).
void fixable(tune::TrialContext& t) {
  int start = 0;
  if (auto ck = t.checkpoint()) start = ck->read<int>("step") + 1;
  for (int step = start; step < 4; ++step) {
    if (step == 2 && !fs::exists(t.config().get<std::string>("fixed_when"))) throw std::runtime_error("not fixed yet");
    t.report({{"step", step}, {"resumed_at", start}}, tune::Checkpoint::with("step", step));
  }
}
GANTRY_TRAINABLE(fixable);

// PBT's population: "value" grows by lr per step, carried in the checkpoint, so a clone
// continues from its source's value. The "no_checkpoint" trial is the best and never
// saves one.
void population(tune::TrialContext& t) {
  double lr = t.config().get<double>("lr");
  bool saves = !t.config().get<bool>("no_checkpoint", false);
  double value = 0;
  int step = 0;
  double restored = -1;
  if (auto ck = t.checkpoint()) {
    value = ck->read<double>("value");
    step = ck->read<int>("step") + 1;
    restored = value;
  }
  for (; step < 12; ++step) {
    value += saves ? lr : 10;
    std::optional<tune::Checkpoint> ck;
    if (saves) ck = tune::Checkpoint::with("value", value).set("step", step);
    t.report({{"value", value}, {"step", step}, {"restored_value", restored}}, ck);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}
GANTRY_TRAINABLE(population);

void gpu_holder(tune::TrialContext& t) {
  auto ids = gantry::get_gpu_ids();
  double begin = unix_now();
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  t.report({{"gpu", ids.empty() ? -1 : ids[0]}, {"gpus", ids.size()}, {"begin", begin}, {"end", unix_now()}});
}
GANTRY_TRAINABLE(gpu_holder);

// The sweep the restore test's driver runs (and is killed in): twelve trials of five
// slow steps, two at a time.
void slow_steps(tune::TrialContext& t) {
  int start = 0;
  if (auto ck = t.checkpoint()) start = ck->read<int>("step") + 1;
  for (int step = start; step < 5; ++step) {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    t.report({{"loss", t.config().get<double>("x") + step}, {"step", step}}, tune::Checkpoint::with("step", step));
  }
}
GANTRY_TRAINABLE(slow_steps);

tune::ParamSpace slow_space() { return {{"x", tune::uniform(0, 1)}}; }
tune::TuneConfig slow_config() {
  return {.metric = "loss", .mode = tune::kMin, .num_samples = 12, .max_concurrent_trials = 2,
          .search_alg = tune::RandomSearch(7)};
}

// The record the Tuner's driver published for the dashboard about `experiment`.
Json dashboard_record(const std::string& experiment) {
  std::optional<std::string> text = gantry::kv::get("gantry.dashboard/tune/" + experiment, {.cluster = true});
  if (!text.has_value()) {
    ADD_FAILURE() << "sweep " << experiment << " published no dashboard record";
    return Json::object();
  }
  return Json::parse(*text);
}

int reports_of(const tune::ResultGrid& grid) {
  int n = 0;
  for (const auto& r : grid) n += static_cast<int>(r.metrics_history.size());
  return n;
}

class Cluster : public ::testing::Environment {
 public:
  void SetUp() override { gantry::init({.num_cpus = 4, .num_gpus = 2}); }
  void TearDown() override {
    gantry::shutdown();
    std::error_code ec;
    fs::remove_all(storage(), ec);
  }
};

}  // namespace

TEST(Tune, GridAndRandomSweepWritesEveryFileAndFindsTheBest) {
  tune::Tuner tuner(curve, {{"x", tune::grid_search({0.0, 0.25, 0.5, 1.0})}, {"steps", 5},
                            {"noise", tune::uniform(0, 1)}},
                    {.metric = "loss", .mode = tune::kMin, .num_samples = 2},
                    {.name = "grid", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 8u);  // 4 grid points x 2 samples
  EXPECT_EQ(grid.num_terminated(), 8u);
  EXPECT_EQ(grid.num_errors(), 0u);
  const tune::Result& best = grid.best_result();
  EXPECT_DOUBLE_EQ(best.config["x"].get<double>(), 0.25);
  EXPECT_EQ(best.metrics["training_iteration"], 5);
  ASSERT_TRUE(best.checkpoint.has_value());
  EXPECT_EQ(best.checkpoint->read<int>("step"), 4);
  for (const auto& r : grid) {
    fs::path dir = r.path;
    EXPECT_TRUE(fs::exists(dir / "params.json")) << dir;
    EXPECT_EQ(count_lines(dir / "result.json"), 5u);
    EXPECT_EQ(count_lines(dir / "progress.csv"), 6u);  // header and five rows
    bool events = false;
    for (const auto& e : fs::directory_iterator(dir))
      events |= e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
    EXPECT_TRUE(events) << "no TensorBoard events file in " << dir;
    EXPECT_TRUE(r.config.contains("noise"));
    EXPECT_EQ(r.config["steps"], 5);
  }
  EXPECT_TRUE(fs::exists(fs::path(grid.experiment_path()) / "results.csv"));
  EXPECT_TRUE(tune::Tuner::can_restore(grid.experiment_path()));

  // The dashboard's record: the same trials, values and best as the ResultGrid.
  Json record = dashboard_record("grid");
  EXPECT_EQ(record["kind"], "tune");
  EXPECT_EQ(record["name"], "grid");
  EXPECT_EQ(record["path"], grid.experiment_path());
  EXPECT_EQ(record["state"], "finished");
  EXPECT_EQ(record["job_id"], gantry::runtime_context().job_id);
  EXPECT_EQ(record["metric"], "loss");
  EXPECT_EQ(record["mode"], "min");
  EXPECT_FALSE(record["searcher"].get<std::string>().empty());
  EXPECT_EQ(record["scheduler"], "fifo");
  EXPECT_LE(record["started"].get<double>(), record["updated"].get<double>());
  EXPECT_EQ(record["counts"], (Json{{"PENDING", 0}, {"RUNNING", 0}, {"PAUSED", 0}, {"TERMINATED", 8}, {"ERROR", 0}}));
  EXPECT_EQ(record["best"]["trial_id"], best.trial_id);
  EXPECT_DOUBLE_EQ(record["best"]["value"].get<double>(), best.metrics["loss"].get<double>());
  EXPECT_EQ(record["best"]["config"], best.config);
  ASSERT_EQ(record["trials"].size(), grid.size());
  for (size_t i = 0; i < grid.size(); ++i) {
    const Json& t = record["trials"][i];
    const tune::Result& r = grid[i];
    SCOPED_TRACE(r.trial_id);
    EXPECT_EQ(t["trial_id"], r.trial_id);
    EXPECT_EQ(t["status"], "TERMINATED");
    EXPECT_EQ(t["config"], r.config);
    EXPECT_EQ(t["iterations"], 5);
    EXPECT_DOUBLE_EQ(t["last"]["loss"].get<double>(), r.metrics["loss"].get<double>());
    EXPECT_EQ(t["node_id"], gantry::nodes().at(0).node_id);
    EXPECT_TRUE(t["error"].is_null());
    ASSERT_EQ(t["history"].size(), 5u);
    double lowest = INFINITY;
    for (size_t k = 0; k < 5; ++k) {
      EXPECT_EQ(t["history"][k][0], k + 1);
      double loss = r.metrics_history[k]["loss"].get<double>();
      EXPECT_DOUBLE_EQ(t["history"][k][1].get<double>(), loss);
      lowest = std::min(lowest, loss);
    }
    EXPECT_DOUBLE_EQ(t["best"].get<double>(), lowest);
  }
}

TEST(Tune, AshaStopsPoorTrialsEarlierThanFifo) {
  auto sweep = [](std::shared_ptr<tune::TrialScheduler> scheduler, const std::string& name) {
    tune::Tuner tuner(curve, {{"x", tune::uniform(0, 1)}, {"steps", 27}},
                      {.metric = "loss", .mode = tune::kMin, .num_samples = 12, .max_concurrent_trials = 4,
                       .search_alg = tune::RandomSearch(11), .scheduler = std::move(scheduler)},
                      {.name = name, .storage_path = storage().string(), .verbose = 0});
    return tuner.fit();
  };
  tune::ResultGrid fifo = sweep(tune::FIFO(), "fifo");
  tune::ResultGrid asha = sweep(tune::ASHA({.time_attr = "training_iteration", .max_t = 27, .grace_period = 1,
                                            .reduction_factor = 3}),
                                "asha");
  EXPECT_EQ(reports_of(fifo), 12 * 27);
  EXPECT_LT(reports_of(asha), reports_of(fifo) / 2) << "ASHA should cut most trials at its early rungs";
  // The same configs were drawn (same seed): ASHA keeps the best one running to the end.
  const auto& best_fifo = fifo.best_result();
  const auto& best_asha = asha.best_result();
  EXPECT_DOUBLE_EQ(best_fifo.config["x"].get<double>(), best_asha.config["x"].get<double>());
  EXPECT_EQ(best_asha.metrics["training_iteration"], 27);
  int stopped_early = 0;
  for (const auto& r : asha) stopped_early += r.metrics["training_iteration"].get<int>() < 27;
  EXPECT_GT(stopped_early, 6);
}

TEST(Tune, AshaStopsTrialsWhoseLossDiverges) {
  tune::Tuner tuner(curve, {{"x", tune::grid_search({0.1, 0.2, 0.3})}, {"diverge", tune::grid_search({false, true})},
                            {"steps", 9}},
                    {.metric = "loss", .mode = tune::kMin, .max_concurrent_trials = 1,
                     .scheduler = tune::ASHA({.max_t = 9, .grace_period = 1, .reduction_factor = 3})},
                    {.name = "diverging", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 6u);
  for (const auto& r : grid) {
    if (!r.config["diverge"].get<bool>()) continue;
    EXPECT_LT(r.metrics["training_iteration"].get<int>(), 9) << "a NaN loss reached the scheduler as NaN and lost";
    EXPECT_TRUE(std::isnan(r.metrics["loss"].get<double>()) || r.metrics["loss"].is_null());
  }
  EXPECT_LE(grid.best_result().config["x"].get<double>(), 0.3);
  EXPECT_FALSE(grid.best_result().config["diverge"].get<bool>());
}

TEST(Tune, BohbWithHyperBandPausesCutsAndPromotesTrials) {
  tune::TuneConfig config{.metric = "loss", .mode = tune::kMin, .num_samples = 9, .max_concurrent_trials = 3};
  config.search_alg = tune::BOHB({.seed = 4});
  config.scheduler = tune::HyperBand({.max_t = 9, .reduction_factor = 3});
  tune::Tuner tuner(curve, {{"x", tune::uniform(0, 1)}, {"steps", 9}}, config,
                    {.name = "bohb", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 9u);
  EXPECT_EQ(grid.num_terminated(), 9u);
  int pauses = 0, full = 0, cut = 0;
  for (const Json& e : read_events(grid.experiment_path())) {
    if (e["event"] == "end" && e["status"] == "PAUSED") ++pauses;
  }
  for (const auto& r : grid) {
    int iterations = r.metrics["training_iteration"];
    full += iterations == 9;
    cut += iterations < 9;
  }
  if (pauses == 0 || cut == 0) {
    for (const Json& e : read_events(grid.experiment_path())) {
      if (e["event"] != "result") std::cout << e.dump() << "\n";
    }
  }
  EXPECT_GT(pauses, 0) << "HyperBand pauses trials at its milestones";
  EXPECT_GT(full, 0) << "the best of a bracket runs to max_t";
  EXPECT_GT(cut, 0) << "the rest of a bracket is cut at a milestone";
  EXPECT_EQ(grid.best_result().metrics["training_iteration"], 9);
}

TEST(Tune, InvalidSpacesAndRequestsFailBeforeAnyTrial) {
  auto experiment = storage() / "invalid";
  const tune::TuneConfig plain;
  auto attempt = [&](tune::ParamSpace space, const tune::TuneConfig& config) {
    tune::RunConfig run;
    run.name = "invalid";
    run.storage_path = storage().string();
    run.verbose = 0;
    tune::Tuner tuner(curve, std::move(space), config, run);
    tuner.fit();
  };
  try {
    attempt({{"x", tune::loguniform(0, 1)}}, plain);
    FAIL() << "a log domain with a zero bound was accepted";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("x"), std::string::npos) << e.what();
  }
  EXPECT_THROW(attempt({{"x", tune::choice({})}}, plain), gantry::Error);
  EXPECT_THROW(attempt({{"x", tune::uniform(2, 1)}}, plain), gantry::Error);
  try {
    tune::TuneConfig with_point;
    with_point.points_to_evaluate = {Json{{"y", 1}}};
    attempt({{"x", tune::grid_search({1, 2})}}, with_point);
    FAIL() << "a point without the grid's key was accepted";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("points_to_evaluate[0]"), std::string::npos) << e.what();
  }
  try {
    tune::TuneConfig too_big;
    too_big.resources_per_trial.num_cpus = 64;
    attempt({{"x", tune::uniform(0, 1)}}, too_big);
    FAIL() << "a trial larger than any node was accepted";
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("CPU: 64"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(experiment)) << "nothing may be written for a sweep that cannot start";
}

TEST(Tune, FailedTrialsAreErrorsWithTheirExceptionAndRetriesResumeFromCheckpoints) {
  tune::Tuner tuner(flaky, {{"kind", tune::grid_search({"fail_once", "fail_always", "fine"})}},
                    {.max_concurrent_trials = 3},
                    {.name = "flaky", .storage_path = storage().string(), .failure = {.max_failures = 1},
                     .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 3u);
  EXPECT_EQ(grid.num_errors(), 1u);
  EXPECT_EQ(grid.num_terminated(), 2u);
  for (const auto& r : grid) {
    std::string kind = r.config["kind"];
    if (kind == "fail_always") {
      ASSERT_TRUE(r.error.has_value());
      EXPECT_NE(r.error->find("std::invalid_argument"), std::string::npos) << *r.error;
      EXPECT_NE(r.error->find("bad batch at step 3"), std::string::npos) << *r.error;
      EXPECT_NE(r.error->find("node"), std::string::npos) << *r.error;
      EXPECT_EQ(grid.errors().size(), 1u);
    } else if (kind == "fail_once") {
      EXPECT_FALSE(r.error.has_value());
      // Steps 0-2, then the retry resumed after the step-2 checkpoint.
      EXPECT_EQ(r.metrics["step"], 5);
      EXPECT_EQ(r.metrics["resumed_at"], 3);
      EXPECT_EQ(r.metrics_history.size(), 6u);
    }
  }
  Json record = dashboard_record("flaky");
  EXPECT_EQ(record["state"], "finished");
  EXPECT_TRUE(record["metric"].is_null());
  EXPECT_TRUE(record["best"].is_null()) << "a sweep without a metric has no best";
  EXPECT_EQ(record["counts"]["ERROR"], 1);
  EXPECT_EQ(record["counts"]["TERMINATED"], 2);
  ASSERT_EQ(record["trials"].size(), 3u);
  for (size_t i = 0; i < grid.size(); ++i) {
    const Json& t = record["trials"][i];
    EXPECT_EQ(t["status"], tune::status_name(grid[i].status));
    EXPECT_EQ(t["error"], grid[i].error ? Json(*grid[i].error) : Json(nullptr));
    if (grid[i].config["kind"] != "fail_always") {
      EXPECT_EQ(t["iterations"], 6);
    }
  }
}

TEST(Tune, PbtContinuesTrialsFromClonedCheckpointsOfTopTrialsOnly) {
  tune::Tuner tuner(population,
                    {{"lr", tune::grid_search({0.1, 0.5, 1.0, 2.0})}, {"no_checkpoint", false}},
                    {.metric = "value", .mode = tune::kMax, .max_concurrent_trials = 4,
                     .scheduler = tune::PBT({.time_attr = "training_iteration", .perturbation_interval = 3,
                                             .hyperparam_mutations = {{"lr", tune::uniform(0.1, 2.0)}},
                                             .quantile_fraction = 0.25, .seed = 5})},
                    {.name = "pbt", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 4u);
  int exploits = 0;
  for (const Json& e : read_events(grid.experiment_path())) {
    if (e["event"] != "decision" || e["action"] != "exploit") continue;
    ++exploits;
    EXPECT_FALSE(e["reason"].get<std::string>().empty());
  }
  EXPECT_GT(exploits, 0);
  // A trial that restarted from a clone reports the value it was given first.
  bool continued = false;
  for (const auto& r : grid) {
    for (const Json& m : r.metrics_history) {
      if (m["restored_value"].get<double>() >= 0) continued = true;
    }
  }
  EXPECT_TRUE(continued) << "no trial reported a restored value after an exploit";
}

TEST(Tune, PbtNeverClonesATrialWithoutACheckpoint) {
  // The best trial by far never saves a checkpoint: the others may not clone it.
  tune::TuneConfig config{.metric = "value", .mode = tune::kMax, .max_concurrent_trials = 4};
  config.scheduler = tune::PBT({.time_attr = "training_iteration", .perturbation_interval = 2,
                                .hyperparam_mutations = {{"lr", tune::uniform(0.1, 0.3)}},
                                .quantile_fraction = 0.5, .seed = 3});
  config.points_to_evaluate = {Json{{"lr", 0.1}, {"no_checkpoint", true}}};
  tune::Tuner tuner(population, {{"lr", tune::grid_search({0.1, 0.2, 0.3})}, {"no_checkpoint", false}}, config,
                    {.name = "pbt_nockpt", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_GE(grid.size(), 4u);
  std::string without;
  for (const auto& r : grid)
    if (r.config["no_checkpoint"].get<bool>()) without = r.trial_id;
  ASSERT_FALSE(without.empty());
  for (const Json& e : read_events(grid.experiment_path())) {
    if (e["event"] == "decision" && e["action"] == "exploit") {
      EXPECT_NE(e["from"], without) << e.dump();
    }
  }
}

TEST(Tune, FractionalGpuTrialsNeverOversubscribeADevice) {
  tune::Tuner tuner(gpu_holder, {{"i", tune::grid_search({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})}},
                    {.resources_per_trial = {.num_cpus = 0, .num_gpus = 0.5}},
                    {.name = "gpus", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 12u);
  std::map<int, std::vector<std::pair<double, double>>> by_gpu;
  for (const auto& r : grid) {
    ASSERT_EQ(r.metrics["gpus"], 1) << r.metrics.dump();
    int gpu = r.metrics["gpu"];
    ASSERT_TRUE(gpu == 0 || gpu == 1) << gpu;
    by_gpu[gpu].push_back({r.metrics["begin"].get<double>(), r.metrics["end"].get<double>()});
  }
  for (auto& [gpu, spans] : by_gpu) {
    // At no trial's start do more than two trials (2 x 0.5) hold the device.
    for (const auto& [begin, end] : spans) {
      int holding = 0;
      for (const auto& [b, e] : spans) holding += b <= begin + 1e-3 && e > begin + 1e-3;
      EXPECT_LE(holding, 2) << "GPU " << gpu << " held by " << holding << " trials of 0.5 at once";
    }
  }
}

TEST(Tune, ActorsAreReusedAndStopCriteriaEndTrials) {
  tune::Tuner tuner(trivial, {{"a", tune::uniform(0, 1)}},
                    {.metric = "score", .mode = tune::kMax, .num_samples = 30, .max_concurrent_trials = 2},
                    {.name = "reuse", .storage_path = storage().string(), .verbose = 0, .trial_files = false});
  tune::ResultGrid grid = tuner.fit();
  ASSERT_EQ(grid.size(), 30u);
  std::set<int> pids;
  for (const auto& r : grid) pids.insert(r.metrics["pid"].get<int>());
  EXPECT_LE(pids.size(), 2u) << "30 trials two at a time should run in two reused actors";
  EXPECT_FALSE(fs::exists(fs::path(grid[0].path) / "result.json")) << "trial_files = false writes no trial files";

  tune::Tuner stopping(curve, {{"x", tune::uniform(0, 1)}, {"steps", 50}}, {.metric = "loss", .num_samples = 2},
                       {.name = "stop", .storage_path = storage().string(), .stop = {{"training_iteration", 4}},
                        .verbose = 0});
  for (const auto& r : stopping.fit()) EXPECT_EQ(r.metrics["training_iteration"], 4);
}

TEST(Tune, RestoreAfterTheDriverIsKilledRunsNoFinishedTrialAgain) {
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    execl("/proc/self/exe", "tune_test", "--driver-for-restore", storage().c_str(), nullptr);
    _exit(127);
  }
  fs::path experiment = storage() / "restored";
  // Kill the driver once four trials have ended and a running one has stored a checkpoint.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  size_t ended_before = 0;
  std::set<std::string> running_with_checkpoint;
  while (std::chrono::steady_clock::now() < deadline) {
    ended_before = 0;
    running_with_checkpoint.clear();
    if (fs::exists(experiment / "experiment_state.jsonl")) {
      std::set<std::string> ended;
      for (const Json& e : read_events(experiment)) {
        if (e["event"] == "end" && e["status"] == "TERMINATED") ended.insert(e["id"].get<std::string>());
        if (e["event"] == "checkpoint") running_with_checkpoint.insert(e["id"].get<std::string>());
      }
      for (const auto& id : ended) running_with_checkpoint.erase(id);
      ended_before = ended.size();
    }
    if (ended_before >= 4 && !running_with_checkpoint.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(ended_before, 4u) << "the driver to be killed did not get far enough";
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  std::set<std::string> finished_before;
  for (const Json& e : read_events(experiment))
    if (e["event"] == "end" && e["status"] == "TERMINATED") finished_before.insert(e["id"]);

  ASSERT_TRUE(tune::Tuner::can_restore(experiment.string()));
  tune::ResultGrid grid = tune::Tuner::restore(experiment.string(), slow_steps).fit();
  ASSERT_EQ(grid.size(), 12u);
  EXPECT_EQ(grid.num_terminated(), 12u);
  for (const auto& r : grid) EXPECT_EQ(r.metrics["step"], 4) << r.trial_id;
  // After the restore's session began, no trial that had finished started again.
  std::vector<Json> events = read_events(experiment);
  size_t sessions = 0;
  std::map<std::string, int> created;
  for (const Json& e : events) {
    if (e["event"] == "session") ++sessions;
    if (e["event"] == "trial") ++created[e["id"]];
    if (sessions >= 2 && e["event"] == "start") {
      EXPECT_EQ(finished_before.count(e["id"]), 0u) << "finished trial " << e["id"] << " ran again";
    }
  }
  EXPECT_EQ(sessions, 2u);
  // A trial that was running with a checkpoint resumed from it rather than from scratch.
  sessions = 0;
  for (const Json& e : events) {
    if (e["event"] == "session") ++sessions;
    if (sessions >= 2 && e["event"] == "start" && running_with_checkpoint.count(e["id"])) {
      EXPECT_GE(e["iteration"].get<int>(), 1) << e.dump();
    }
  }
  EXPECT_EQ(created.size(), 12u);
  for (const auto& [id, n] : created) EXPECT_EQ(n, 1) << id;
  // The restored sweep published its record, with the trials of the killed session too.
  Json record = dashboard_record("restored");
  EXPECT_EQ(record["state"], "finished");
  EXPECT_EQ(record["counts"]["TERMINATED"], 12);
  EXPECT_EQ(record["best"]["trial_id"], grid.best_result().trial_id);
  ASSERT_EQ(record["trials"].size(), 12u);
  for (size_t i = 0; i < grid.size(); ++i) {
    const Json& t = record["trials"][i];
    EXPECT_EQ(t["trial_id"], grid[i].trial_id);
    EXPECT_EQ(t["iterations"], 5);
    ASSERT_FALSE(t["history"].empty()) << t.dump();
    EXPECT_EQ(t["history"].back()[0], 5);
    EXPECT_DOUBLE_EQ(t["history"].back()[1].get<double>(), grid[i].metrics["loss"].get<double>());
  }
  // The same configs as an uninterrupted sweep with the same seed: the searcher went on
  // where it was.
  tune::ResultGrid fresh = tune::Tuner(slow_steps, slow_space(), slow_config(),
                                       {.name = "unbroken", .storage_path = storage().string(), .verbose = 0})
                               .fit();
  std::multiset<double> a, b;
  for (const auto& r : grid) a.insert(r.config["x"].get<double>());
  for (const auto& r : fresh) b.insert(r.config["x"].get<double>());
  EXPECT_EQ(a, b);
}

TEST(Tune, RestoreResumesOrRestartsErroredTrialsWhenAsked) {
  fs::path marker = storage() / "fixed";
  auto sweep = [&](const std::string& name) {
    tune::Tuner tuner(fixable, {{"fixed_when", marker.string()}}, {},
                      {.name = name, .storage_path = storage().string(), .verbose = 0});
    tune::ResultGrid grid = tuner.fit();
    EXPECT_EQ(grid.num_errors(), 1u);
    return grid.experiment_path();
  };
  std::string resumed = sweep("errored_resume");
  std::string restarted = sweep("errored_restart");
  std::string kept = sweep("errored_kept");
  { std::ofstream(marker) << "fixed"; }

  tune::ResultGrid a = tune::Tuner::restore(resumed, fixable, {.resume_errored = true}).fit();
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a.num_errors(), 0u);
  EXPECT_EQ(a[0].metrics["step"], 3);
  EXPECT_EQ(a[0].metrics["resumed_at"], 2) << "resumed after its step-1 checkpoint";

  tune::ResultGrid b = tune::Tuner::restore(restarted, fixable, {.restart_errored = true}).fit();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b.num_errors(), 0u);
  EXPECT_EQ(b[0].metrics["resumed_at"], 0) << "started over from scratch";
  EXPECT_EQ(b[0].metrics["training_iteration"], 4);

  tune::ResultGrid c = tune::Tuner::restore(kept, fixable).fit();
  EXPECT_EQ(c.num_errors(), 1u) << "by default an errored trial stays errored";
  fs::remove(marker);
}

TEST(Tune, StatusCommandPrintsTheTableFromTheFiles) {
  tune::Tuner tuner(curve, {{"x", tune::grid_search({0.1, 0.9})}, {"steps", 3}}, {.metric = "loss"},
                    {.name = "status", .storage_path = storage().string(), .verbose = 0});
  tune::ResultGrid grid = tuner.fit();
  auto out = gantry::test_support::run(std::string(GANTRY_CLI_PATH) + " tune status " + grid.experiment_path());
  EXPECT_EQ(out.code, 0) << out.out;
  EXPECT_NE(out.out.find("Finished"), std::string::npos) << out.out;
  EXPECT_NE(out.out.find("2 TERMINATED"), std::string::npos) << out.out;
  EXPECT_NE(out.out.find(grid[0].trial_id), std::string::npos) << out.out;
  EXPECT_NE(out.out.find("127.0.0.1"), std::string::npos) << "the node each trial ran on:\n" << out.out;
  auto listing = gantry::test_support::run(std::string(GANTRY_CLI_PATH) + " tune status " + storage().string());
  EXPECT_EQ(listing.code, 0) << listing.out;
  EXPECT_NE(listing.out.find("status: 2 trial(s)"), std::string::npos) << listing.out;
  auto missing = gantry::test_support::run(std::string(GANTRY_CLI_PATH) + " tune status /nonexistent/sweep");
  EXPECT_EQ(missing.code, 1) << missing.out;
  EXPECT_NE(missing.out.find("not a directory"), std::string::npos) << missing.out;
}

int main(int argc, char** argv) {
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  if (argc == 3 && std::string(argv[1]) == "--driver-for-restore") {
    gantry::init({.num_cpus = 4});
    tune::Tuner(slow_steps, slow_space(), slow_config(), {.name = "restored", .storage_path = argv[2], .verbose = 0})
        .fit();
    gantry::shutdown();
    return 0;
  }
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new Cluster);
  return RUN_ALL_TESTS();
}
