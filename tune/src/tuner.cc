#include "gantry/tune/tuner.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <iostream>
#include <random>
#include <sstream>

#include "dashboard_record.h"
#include "experiment_log.h"
#include "gantry/gantry.h"
#include "progress_reporter.h"
#include "trial_files.h"
#include "trial_runner.h"
#include "tuner_driver.h"

// The trial actor's functions, registered in the file every sweep's driver links.
using gantry::tune::detail::TrialRunner;
GANTRY_REMOTE(TrialRunner::create, &TrialRunner::info, &TrialRunner::run, &TrialRunner::next);

namespace gantry::tune {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace detail {
namespace {

constexpr const char* kTunerFile = "tuner.json";
constexpr const char* kStateFile = "experiment_state.jsonl";
constexpr const char* kResultsFile = "results.csv";
constexpr int64_t kNextWaitMs = 1000;

std::string default_experiment_name() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "tune_%Y-%m-%d_%H-%M-%S", &tm);
  return buf;
}

const char* mode_name(Mode m) { return m == kMin ? "min" : "max"; }
Mode mode_from(const std::string& s) { return s == "max" ? kMax : kMin; }

Json resources_to_json(const Resources& r) {
  return Json{{"num_cpus", r.num_cpus}, {"num_gpus", r.num_gpus}, {"memory", r.memory}, {"resources", r.resources}};
}
Resources resources_from(const Json& j) {
  Resources r;
  r.num_cpus = j.value("num_cpus", 1.0);
  r.num_gpus = j.value("num_gpus", 0.0);
  r.memory = j.value("memory", 0.0);
  r.resources = j.value("resources", std::map<std::string, double>{});
  return r;
}

// The scheduling view of a request: {"CPU": 1, "GPU": 0.25, ...} without zeros.
std::map<std::string, double> demand_of(const Resources& r) {
  std::map<std::string, double> d;
  if (r.num_cpus > 0) d["CPU"] = r.num_cpus;
  if (r.num_gpus > 0) d["GPU"] = r.num_gpus;
  if (r.memory > 0) d["memory"] = r.memory;
  for (const auto& [k, v] : r.resources)
    if (v > 0) d[k] = v;
  return d;
}

std::string describe(const std::map<std::string, double>& d) {
  std::ostringstream s;
  s << "{";
  bool first = true;
  for (const auto& [k, v] : d) {
    s << (first ? "" : ", ") << k << ": " << v;
    first = false;
  }
  s << "}";
  return s.str();
}

std::string short_error(const std::exception& e) {
  if (const auto* t = dynamic_cast<const TaskError*>(&e)) {
    return t->remote_type() + ": " + t->remote_message() + " (on node " + t->node().substr(0, 12) + ", pid " +
           std::to_string(t->pid()) + ")";
  }
  return e.what();
}

bool process_died(const std::exception& e) {
  return dynamic_cast<const ActorDiedError*>(&e) != nullptr || dynamic_cast<const WorkerCrashedError*>(&e) != nullptr;
}

}  // namespace

// ---- construction and validation --------------------------------------------------------

TunerDriver::~TunerDriver() = default;

TunerDriver::TunerDriver(TrialSpec trial, ParamSpace space, TuneConfig tune, RunConfig run)
    : trial_(std::move(trial)), space_(std::move(space)), tune_(std::move(tune)), run_(std::move(run)) {
  validate();
  if (!tune_.search_alg) tune_.search_alg = BasicVariant();
  if (!tune_.scheduler) tune_.scheduler = FIFO();
  setup_policies();
}

void TunerDriver::validate() const {
  if (trial_.trainable.empty()) throw Error("the Tuner needs a trainable");
  if (find_trainable(trial_.trainable) == nullptr) {
    throw Error("the trainable given to the Tuner is not registered: add GANTRY_TRAINABLE(" + trial_.trainable +
                "); at namespace scope next to it");
  }
  space_.validate();
  if (tune_.num_samples < 1) {
    throw Error("TuneConfig::num_samples must be at least 1, not " + std::to_string(tune_.num_samples));
  }
  if (tune_.max_concurrent_trials < 0) {
    throw Error("TuneConfig::max_concurrent_trials must be 0 (as many as fit) or more, not " +
                std::to_string(tune_.max_concurrent_trials));
  }
  const Resources& r = tune_.resources_per_trial;
  if (r.num_cpus < 0 || r.num_gpus < 0 || r.memory < 0) {
    throw Error("TuneConfig::resources_per_trial may not be negative (num_cpus " + std::to_string(r.num_cpus) +
                ", num_gpus " + std::to_string(r.num_gpus) + ")");
  }
  if (r.num_gpus > 1 && std::floor(r.num_gpus) != r.num_gpus) {
    throw Error("TuneConfig::resources_per_trial.num_gpus above 1 must be a whole number, not " +
                std::to_string(r.num_gpus));
  }
  for (size_t i = 0; i < tune_.points_to_evaluate.size(); ++i) {
    const Json& p = tune_.points_to_evaluate[i];
    if (!p.is_object()) throw Error("each of TuneConfig::points_to_evaluate must be a JSON object, not " + p.dump());
    std::map<std::string, Json> values = ParamSpace::flatten(p);
    for (const auto& [path, domain] : space_.domains()) {
      if (domain->kind == Domain::Kind::kGrid && values.count(path) == 0) {
        throw Error("TuneConfig::points_to_evaluate[" + std::to_string(i) + "] must set \"" + path +
                    "\", a grid_search value of the space");
      }
    }
  }
  if (run_.verbose < 0 || run_.verbose > 3) {
    throw Error("RunConfig::verbose must be 0 to 3, not " + std::to_string(run_.verbose));
  }
  if (run_.failure.max_failures < -1) throw Error("RunConfig::failure.max_failures must be -1 or more");
  if (run_.checkpoint.num_to_keep < 0) throw Error("RunConfig::checkpoint.num_to_keep must be 0 or more");
}

void TunerDriver::setup_policies() {
  int grid = static_cast<int>(space_.grid_points().size());  // 1 without a grid
  int points = static_cast<int>(tune_.points_to_evaluate.size());
  searcher_samples_ = space_.has_grid() ? tune_.num_samples : std::max(0, tune_.num_samples - points);
  searcher_trials_max_ = searcher_samples_ * grid;
  max_trials_ = points + searcher_trials_max_;
  tune_.search_alg->setup({tune_.metric, tune_.mode, &space_, searcher_samples_});
  tune_.scheduler->setup(tune_.metric, tune_.mode);
}

// ---- the experiment's files --------------------------------------------------------------

Json TunerDriver::describe_experiment() const {
  Json points = Json::array();
  for (const Json& p : tune_.points_to_evaluate) points.push_back(p);
  Json stop = Json::object();
  for (const auto& [k, v] : run_.stop) stop[k] = v;
  return Json{{"version", 1},
              {"name", name_},
              {"created", unix_now()},
              {"trainable", trial_.trainable},
              {"trainable_spec", trial_.spec},
              {"param_space", space_.has_sample_from() ? Json(nullptr) : space_.to_json()},
              {"tune",
               {{"metric", tune_.metric},
                {"mode", mode_name(tune_.mode)},
                {"num_samples", tune_.num_samples},
                {"max_concurrent_trials", tune_.max_concurrent_trials},
                {"resources_per_trial", resources_to_json(tune_.resources_per_trial)},
                {"points_to_evaluate", points},
                {"reuse_actors", tune_.reuse_actors},
                {"time_budget_s", tune_.time_budget ? Json(tune_.time_budget->count()) : Json(nullptr)},
                {"searcher", tune_.search_alg->spec()},
                {"scheduler", tune_.scheduler->spec()},
                {"searcher_name", tune_.search_alg->name()},
                {"scheduler_name", tune_.scheduler->name()}}},
              {"run",
               {{"storage_path", run_.storage_path},
                {"max_failures", run_.failure.max_failures},
                {"num_to_keep", run_.checkpoint.num_to_keep},
                {"score_attribute", run_.checkpoint.score_attribute},
                {"score_order", mode_name(run_.checkpoint.score_order)},
                {"stop", stop},
                {"verbose", run_.verbose},
                {"trial_files", run_.trial_files},
                {"progress_interval_ms", run_.progress_interval.count()}}}};
}

std::unique_ptr<TunerDriver> TunerDriver::restore(const std::string& path, TrialSpec trial, RestoreOptions options) {
  fs::path dir = fs::absolute(expand_home(path));
  fs::path file = dir / kTunerFile;
  if (!fs::exists(file) || !fs::exists(dir / kStateFile)) {
    throw Error(dir.string() + " holds no sweep to restore (no " + kTunerFile + " and " + kStateFile + " there)");
  }
  Json j;
  try {
    std::ifstream in(file);
    j = Json::parse(in);
  } catch (const Json::exception& e) {
    throw Error(file.string() + " is not valid JSON (" + e.what() + "); the experiment cannot be restored");
  }
  if (j.value("trainable", "") != trial.trainable) {
    throw Error("the sweep at " + dir.string() + " ran the trainable \"" + j.value("trainable", "") +
                "\", not \"" + trial.trainable + "\"");
  }
  const Json& t = j.at("tune");
  const Json& r = j.at("run");
  ParamSpace space;
  if (options.param_space) {
    space = std::move(*options.param_space);
  } else if (j.at("param_space").is_null()) {
    throw Error("the sweep at " + dir.string() +
                " has sample_from values, whose functions are not stored: pass the space again in "
                "RestoreOptions::param_space");
  } else {
    space = ParamSpace::from_json(j.at("param_space"));
  }
  TuneConfig tune;
  tune.metric = t.value("metric", "");
  tune.mode = mode_from(t.value("mode", "min"));
  tune.num_samples = t.value("num_samples", 1);
  tune.max_concurrent_trials = t.value("max_concurrent_trials", 0);
  tune.resources_per_trial = resources_from(t.at("resources_per_trial"));
  for (const Json& p : t.value("points_to_evaluate", Json::array())) tune.points_to_evaluate.push_back(p);
  tune.reuse_actors = t.value("reuse_actors", true);
  if (t.contains("time_budget_s") && !t["time_budget_s"].is_null()) {
    tune.time_budget = std::chrono::seconds(t["time_budget_s"].get<int64_t>());
  }
  if (options.search_alg) {
    tune.search_alg = options.search_alg;
  } else if (t.at("searcher").is_null()) {
    throw Error("the sweep at " + dir.string() + " used a searcher of your own (" + t.value("searcher_name", "") +
                "): pass a fresh one in RestoreOptions::search_alg");
  } else {
    tune.search_alg = make_searcher(t.at("searcher"));
  }
  if (options.scheduler) {
    tune.scheduler = options.scheduler;
  } else if (t.at("scheduler").is_null()) {
    throw Error("the sweep at " + dir.string() + " used a scheduler of your own (" +
                t.value("scheduler_name", "") + "): pass a fresh one in RestoreOptions::scheduler");
  } else {
    tune.scheduler = make_scheduler(t.at("scheduler"));
  }
  RunConfig run;
  run.name = dir.filename().string();
  run.storage_path = dir.parent_path().string();
  run.failure.max_failures = r.value("max_failures", 0);
  run.checkpoint.num_to_keep = r.value("num_to_keep", 0);
  run.checkpoint.score_attribute = r.value("score_attribute", "");
  run.checkpoint.score_order = mode_from(r.value("score_order", "max"));
  run.stop = r.value("stop", std::map<std::string, double>{});
  run.verbose = r.value("verbose", 1);
  run.trial_files = r.value("trial_files", true);
  run.progress_interval = std::chrono::milliseconds(r.value("progress_interval_ms", int64_t{1000}));
  if (trial.spec.is_null()) trial.spec = j.value("trainable_spec", Json());
  auto driver = std::make_unique<TunerDriver>(std::move(trial), std::move(space), std::move(tune), std::move(run));
  driver->restore_ = options;
  driver->restoring_ = true;
  driver->path_ = dir;
  driver->name_ = run.name;
  return driver;
}

void TunerDriver::prepare_experiment() {
  if (restoring_) {
    name_ = path_.filename().string();
    log_ = std::make_unique<ExperimentLog>((path_ / kStateFile).string());
    for (const Json& event : ExperimentLog::read((path_ / kStateFile).string())) replay(event);
    return;
  }
  fs::path storage = fs::absolute(expand_home(run_.storage_path));
  std::string base = run_.name.empty() ? default_experiment_name() : run_.name;
  name_ = base;
  for (int n = 2; fs::exists(storage / name_ / kTunerFile); ++n) name_ = base + "_" + std::to_string(n);
  path_ = storage / name_;
  fs::create_directories(path_);
  if (name_ != base) say(1, "an experiment named " + base + " exists there already: this one is " + name_);
  std::random_device rd;
  char id[8];
  std::snprintf(id, sizeof(id), "%05x", static_cast<unsigned>(rd() & 0xfffff));
  experiment_id_ = id;
  Json description = describe_experiment();
  description["experiment_id"] = experiment_id_;
  write_file_atomically((path_ / kTunerFile).string(), description.dump(2) + "\n");
  log_ = std::make_unique<ExperimentLog>((path_ / kStateFile).string());
}

// ---- events: the log, the state, and the searcher and scheduler calls they imply -------

Decision TunerDriver::record(Json event) {
  event["time"] = unix_now();
  log_->append(event);
  return apply(event, /*replaying=*/false);
}

void TunerDriver::replay(const Json& event) { apply(event, /*replaying=*/true); }

Decision TunerDriver::apply(const Json& event, bool replaying) {
  state_.apply(event);
  if (dashboard_) dashboard_->on_event(event);
  const std::string type = event.value("event", "");
  Decision decision;
  if (type == "session" && event.contains("experiment_id")) experiment_id_ = event["experiment_id"].get<std::string>();
  if (type == "trial") {
    const TrialRecord* t = state_.record(event.at("id").get<std::string>());
    if (t->from_searcher) {
      ++searcher_trials_;
      // The searcher's draw for this trial happened before it was logged; in a replay
      // it is repeated so the searcher's state (its random stream, its pending trials)
      // is what it was.
      if (replaying) tune_.search_alg->suggest(t->trial_id);
    } else {
      ++points_used_;
    }
    tune_.scheduler->on_trial_add(state_, *t);
  } else if (type == "result") {
    const TrialRecord* t = state_.record(event.at("id").get<std::string>());
    const Json& result = event.at("result");
    decision = tune_.scheduler->on_trial_result(state_, *t, result);
    tune_.search_alg->on_trial_result(t->trial_id, result);
  } else if (type == "searcher_finished") {
    tune_.scheduler->on_no_more_trials(state_);
  } else if (type == "end") {
    const TrialRecord* t = state_.record(event.at("id").get<std::string>());
    const std::string how = event.value("how", "");
    if (t->status == TrialStatus::kTerminated) {
      if (how == "finished") {
        tune_.scheduler->on_trial_complete(state_, *t, t->last_result);
      } else {
        tune_.scheduler->on_trial_remove(state_, *t);
      }
      tune_.search_alg->on_trial_complete(t->trial_id, t->config, t->last_result, false);
    } else if (t->status == TrialStatus::kError) {
      tune_.scheduler->on_trial_remove(state_, *t);
      tune_.search_alg->on_trial_complete(t->trial_id, t->config, t->last_result, true);
    }
  }
  // Trials the scheduler ended on its own (HyperBand cuts paused ones); a replay finds
  // their ends in the log instead.
  std::vector<std::string> cut = tune_.scheduler->take_trials_to_stop();
  if (!replaying) cut_.insert(cut_.end(), cut.begin(), cut.end());
  return decision;
}

void TunerDriver::end_cut_trials() {
  while (!cut_.empty()) {
    std::string id = cut_.front();
    cut_.erase(cut_.begin());
    TrialRecord* t = state_.record(id);
    if (t == nullptr) continue;
    if (t->status == TrialStatus::kPaused || t->status == TrialStatus::kPending) {
      record({{"event", "end"}, {"id", id}, {"status", "TERMINATED"}, {"how", "stopped"}});
    } else if (t->status == TrialStatus::kRunning && t->pending_action.empty()) {
      // Stopped at its next report.
      record({{"event", "decision"}, {"id", id}, {"action", "stop"}, {"reason", "cut by the scheduler"}});
    }
  }
}

// ---- trials ------------------------------------------------------------------------------

bool TunerDriver::has_waiting_trial() const {
  for (const TrialRecord& t : state_.records())
    if (t.status == TrialStatus::kPending) return true;
  return false;
}

void TunerDriver::create_trial() {
  if (state_.searcher_finished) return;
  int created = static_cast<int>(state_.records().size());
  if (created >= max_trials_) {
    record({{"event", "searcher_finished"}});
    return;
  }
  char id[32];
  std::snprintf(id, sizeof(id), "%s_%05d", experiment_id_.c_str(), created);
  Json config;
  bool from_searcher = true;
  if (points_used_ < static_cast<int>(tune_.points_to_evaluate.size())) {
    const Json& point = tune_.points_to_evaluate[static_cast<size_t>(points_used_)];
    // Values a point leaves out are drawn from a stream of its own, so a restored sweep
    // draws them as an unbroken one would.
    Rng rng(0x5eed + static_cast<uint64_t>(points_used_));
    config = space_.resolve(ParamSpace::flatten(point), rng);
    from_searcher = false;
  } else {
    if (searcher_trials_ >= searcher_trials_max_) {
      record({{"event", "searcher_finished"}});
      return;
    }
    Suggestion s = tune_.search_alg->suggest(id);
    if (s.status == Suggestion::Status::kWait) return;
    if (s.status == Suggestion::Status::kFinished) {
      record({{"event", "searcher_finished"}});
      return;
    }
    config = std::move(s.config);
  }
  std::string name = trial_.trainable + "_" + id;
  record({{"event", "trial"}, {"id", id}, {"name", name}, {"dir", name}, {"config", config},
          {"from_searcher", from_searcher}});
  if (run_.trial_files) {
    fs::create_directories(path_ / name);
    TrialFiles(((path_ / name)).string()).write_params(config);
  }
  say(2, "trial " + std::string(id) + " created: " + config.dump());
}

std::shared_ptr<TunerDriver::Runner> TunerDriver::acquire_runner() {
  if (!idle_runners_.empty()) {
    auto r = idle_runners_.back();
    idle_runners_.pop_back();
    return r;
  }
  const Resources& res = tune_.resources_per_trial;
  auto r = std::make_shared<Runner>();
  r->actor = gantry::actor(TrialRunner::create)
                 .options({.num_cpus = res.num_cpus,
                           .num_gpus = res.num_gpus,
                           .memory = res.memory,
                           .resources = res.resources,
                           .max_concurrency = 2})
                 .remote();
  r->info_ref = r->actor.task(&TrialRunner::info).remote();
  return r;
}

void TunerDriver::release_runner(std::shared_ptr<Runner> runner) {
  if (!runner) return;
  if (runner->dead || !tune_.reuse_actors) {
    try {
      gantry::kill(runner->actor);
    } catch (const std::exception&) {
      // Already gone.
    }
    return;
  }
  idle_runners_.push_back(std::move(runner));
}

void TunerDriver::start_trial(const std::string& id) {
  TrialRecord* t = state_.record(id);
  Live live;
  live.id = id;
  live.run = ++runs_;
  live.runner = acquire_runner();
  TrialStart start;
  start.run = live.run;
  start.trainable = trial_.trainable;
  start.trial_id = id;
  start.trial_name = t->name;
  start.experiment = name_;
  start.config_json = t->config.dump();
  start.spec_json = trial_.spec.dump();
  if (!t->checkpoints.empty()) {
    const auto& latest = t->checkpoints.back();
    fs::path dir = path_ / t->directory / latest.directory;
    try {
      start.checkpoint = CheckpointData::of(Checkpoint::load(dir.string()));
      start.iteration = latest.iteration;
    } catch (const std::exception& e) {
      say(1, "trial " + id + ": its checkpoint " + dir.string() + " cannot be read (" + e.what() +
                 "); it starts from scratch");
    }
  }
  record({{"event", "start"}, {"id", id}, {"iteration", start.iteration}});
  live.run_ref = live.runner->actor.task(&TrialRunner::run).remote(start);
  live.next_ref = live.runner->actor.task(&TrialRunner::next).remote(live.run, static_cast<int>(kNoReply), kNextWaitMs);
  live.since_restore = 0;
  say(2, "trial " + id + (start.checkpoint.present ? " resumes at iteration " + std::to_string(start.iteration) : " starts"));
  live_.push_back(std::move(live));
}

void TunerDriver::store_checkpoint(TrialRecord& t, const CheckpointData& data, const Json& result) {
  std::optional<Checkpoint> ck = data.to_checkpoint();
  char name[40];
  std::snprintf(name, sizeof(name), "checkpoint_%06lld", static_cast<long long>(t.iteration));
  fs::path trial_dir = path_ / t.directory;
  fs::path final_dir = trial_dir / name;
  fs::path tmp = trial_dir / (std::string(".tmp_") + name);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  ck->to_directory(tmp.string());
  fs::remove_all(final_dir, ec);  // a resumed trial reporting an iteration again
  fs::rename(tmp, final_dir);     // the commit: a checkpoint directory is whole or absent
  Json score = nullptr;
  if (!run_.checkpoint.score_attribute.empty()) {
    if (const Json* v = ParamSpace::lookup(result, run_.checkpoint.score_attribute)) score = *v;
  }
  std::erase_if(t.checkpoints, [&](const TrialRecord::StoredCheckpoint& c) { return c.directory == name; });
  record({{"event", "checkpoint"}, {"id", t.trial_id}, {"dir", name}, {"iteration", t.iteration}, {"score", score}});
  prune_checkpoints(t);
}

void TunerDriver::prune_checkpoints(TrialRecord& t) {
  int keep = run_.checkpoint.num_to_keep;
  if (keep <= 0 || static_cast<int>(t.checkpoints.size()) <= keep) return;
  // Candidates to delete: all but the latest (always kept, it is what a resume uses),
  // ranked by score (or age); the worst go.
  std::vector<TrialRecord::StoredCheckpoint> older(t.checkpoints.begin(), t.checkpoints.end() - 1);
  const bool by_score = !run_.checkpoint.score_attribute.empty();
  const bool higher_better = run_.checkpoint.score_order == kMax;
  std::stable_sort(older.begin(), older.end(), [&](const auto& a, const auto& b) {
    if (!by_score) return a.iteration > b.iteration;
    bool an = a.score.is_number(), bn = b.score.is_number();
    if (an != bn) return an;
    if (!an) return a.iteration > b.iteration;
    return higher_better ? a.score.template get<double>() > b.score.template get<double>()
                         : a.score.template get<double>() < b.score.template get<double>();
  });
  // The latest counts as one of the kept.
  for (size_t i = static_cast<size_t>(std::max(0, keep - 1)); i < older.size(); ++i) {
    // Never delete what PBT is cloning into another trial right now: clones copy first.
    std::error_code ec;
    fs::remove_all(path_ / t.directory / older[i].directory, ec);
    record({{"event", "checkpoint_deleted"}, {"id", t.trial_id}, {"dir", older[i].directory}});
  }
}

std::optional<std::string> TunerDriver::clone_checkpoint(TrialRecord& into, const std::string& from_id) {
  TrialRecord* from = state_.record(from_id);
  if (from == nullptr || from->checkpoints.empty()) return std::nullopt;
  const auto& source = from->checkpoints.back();
  fs::path source_dir = path_ / from->directory / source.directory;
  if (!fs::is_directory(source_dir)) return std::nullopt;  // deleted under us: never clone a missing one
  char name[64];
  std::snprintf(name, sizeof(name), "checkpoint_%06lld_from_%s", static_cast<long long>(source.iteration),
                from_id.c_str());
  fs::path trial_dir = path_ / into.directory;
  fs::create_directories(trial_dir);
  fs::path tmp = trial_dir / (std::string(".tmp_") + name);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::copy(source_dir, tmp, fs::copy_options::recursive, ec);
  if (ec) return std::nullopt;
  fs::remove_all(trial_dir / name, ec);
  fs::rename(tmp, trial_dir / name);
  return std::string(name);
}

void TunerDriver::handle_report(Live& live, TrialEvent& event) {
  TrialRecord* t = state_.record(live.id);
  Json result;
  try {
    result = Json::from_msgpack(event.metrics_msgpack);
  } catch (const Json::exception&) {
    result = Json::object();
  }
  ++live.since_restore;
  result["training_iteration"] = t->iteration + 1;
  result["iterations_since_restore"] = live.since_restore;
  result["time_this_iter_s"] = event.time_this_iter_s;
  result["time_total_s"] = t->time_total_s + event.time_this_iter_s;
  result["timestamp"] = unix_now();
  result["trial_id"] = live.id;
  if (live.runner->info) {
    result["node_ip"] = live.runner->info->node_ip;
    result["pid"] = live.runner->info->pid;
  }
  if (live.runner->info) dashboard_->set_node_id(live.id, live.runner->info->node_id);
  Json event_json = {{"event", "result"}, {"id", live.id}, {"result", result}};
  if (t->node.empty() && live.runner->info) event_json["node"] = live.runner->info->node_ip;
  Decision decision = record(std::move(event_json));
  if (run_.trial_files) trial_files(*t).append_result(result);
  if (event.checkpoint.present) store_checkpoint(*t, event.checkpoint, result);
  if (run_.verbose >= 3) say(3, "trial " + live.id + " reported " + result.dump());

  // Stop criteria and the time budget end a trial whatever the scheduler said.
  for (const auto& [key, bound] : run_.stop) {
    const Json* v = ParamSpace::lookup(result, key);
    if (v == nullptr || !v->is_number()) continue;
    double x = v->get<double>();
    bool reached = (key == tune_.metric && tune_.mode == kMin) ? x <= bound : x >= bound;
    if (reached) decision = Decision::stop("stop criterion " + key + " reached " + std::to_string(bound));
  }
  if (budget_spent()) decision = Decision::stop("the sweep's time budget is spent");
  if (t->pending_action == "stop" && decision.action == Decision::Action::kContinue) {
    decision = Decision::stop("cut by the scheduler");  // while it ran (take_trials_to_stop)
  }

  int reply = kContinue;
  switch (decision.action) {
    case Decision::Action::kContinue:
      break;
    case Decision::Action::kStop:
      record({{"event", "decision"}, {"id", live.id}, {"action", "stop"}, {"reason", decision.reason}});
      reply = kStopRun;
      break;
    case Decision::Action::kPause:
      record({{"event", "decision"}, {"id", live.id}, {"action", "pause"}, {"reason", decision.reason}});
      reply = kStopRun;
      break;
    case Decision::Action::kExploit: {
      auto cloned = clone_checkpoint(*t, decision.clone_from);
      if (!cloned) {
        say(2, "trial " + live.id + ": PBT chose to clone " + decision.clone_from +
                   ", which has no stored checkpoint now; it goes on unchanged");
        break;
      }
      const TrialRecord* from = state_.record(decision.clone_from);
      int64_t iteration = from->checkpoints.back().iteration;
      record({{"event", "decision"}, {"id", live.id}, {"action", "exploit"}, {"reason", decision.reason},
              {"from", decision.clone_from}, {"config", decision.config}, {"dir", *cloned}});
      record({{"event", "checkpoint"}, {"id", live.id}, {"dir", *cloned}, {"iteration", iteration}, {"score", nullptr}});
      say(2, "trial " + live.id + " exploits " + decision.clone_from + ": " + decision.reason);
      reply = kStopRun;
      break;
    }
  }
  live.next_ref = live.runner->actor.task(&TrialRunner::next).remote(live.run, reply, kNextWaitMs);
}

void TunerDriver::handle_end(Live& live) {
  TrialRecord* t = state_.record(live.id);
  std::string outcome;
  std::string error;
  bool died = false;
  try {
    outcome = live.run_ref.get();
  } catch (const std::exception& e) {
    error = short_error(e);
    died = process_died(e);
  }
  if (live.runner->info) {
    t->node = live.runner->info->node_ip;
    dashboard_->set_node_id(live.id, live.runner->info->node_id);
  }
  Json end = {{"event", "end"}, {"id", live.id}, {"node", t->node}};
  const std::string action = t->pending_action;
  bool restart_now = false;
  if (!error.empty()) {
    int max = run_.failure.max_failures;
    bool retry = max < 0 || t->failures < max;
    end["failure"] = true;
    end["error"] = error;
    end["status"] = retry ? "PENDING" : "ERROR";
    end["how"] = retry ? "retry" : "error";
    say(1, "trial " + live.id + (retry ? " failed, retrying from its latest checkpoint: " : " failed: ") + error);
    if (died) live.runner->dead = true;
    restart_now = retry;
  } else if (action == "pause") {
    end["status"] = "PAUSED";
    end["how"] = "paused";
  } else if (action == "exploit") {
    end["status"] = "PENDING";
    end["how"] = "exploit";
    restart_now = true;
  } else if (action == "stop") {
    end["status"] = "TERMINATED";
    end["how"] = "stopped";
  } else {
    end["status"] = "TERMINATED";
    end["how"] = outcome == "stopped" ? "stopped" : "finished";
  }
  record(end);
  if (auto it = files_.find(live.id); it != files_.end()) files_.erase(it);
  say(2, "trial " + live.id + " " + end["status"].get<std::string>() + " (" + end["how"].get<std::string>() + ")");
  release_runner(live.runner);
  live.runner.reset();
  if (restart_now && !budget_spent()) start_trial(live.id);
}

TrialFiles& TunerDriver::trial_files(const TrialRecord& t) {
  auto it = files_.find(t.trial_id);
  if (it == files_.end()) {
    fs::create_directories(path_ / t.directory);
    it = files_.emplace(t.trial_id, std::make_unique<TrialFiles>((path_ / t.directory).string())).first;
  }
  return *it->second;
}

bool TunerDriver::budget_spent() const {
  return tune_.time_budget && Clock::now() - started_ > *tune_.time_budget;
}

// ---- the loop ----------------------------------------------------------------------------

int TunerDriver::concurrency_limit() const {
  if (tune_.max_concurrent_trials > 0) return tune_.max_concurrent_trials;
  // As many as the live nodes hold, node by node (a trial's actor lives on one node).
  std::map<std::string, double> demand = footprint_;
  int fit = 0;
  if (!trial_.one_node) {
    // A footprint that may spread over nodes: count against the cluster's totals.
    std::map<std::string, double> total = gantry::cluster_resources();
    int n = std::numeric_limits<int>::max();
    for (const auto& [kind, amount] : demand) n = std::min(n, static_cast<int>(std::floor(total[kind] / amount + 1e-9)));
    return std::max(1, n == std::numeric_limits<int>::max() ? 1 : n);
  }
  for (const NodeInfo& node : gantry::nodes()) {
    if (!node.alive) continue;
    int here = std::numeric_limits<int>::max();
    for (const auto& [kind, amount] : demand) {
      auto it = node.resources.find(kind);
      double have = it == node.resources.end() ? 0 : it->second;
      here = std::min(here, static_cast<int>(std::floor(have / amount + 1e-9)));
    }
    if (here == std::numeric_limits<int>::max()) {
      // A trial that asks for nothing: one per CPU keeps the machine busy, not swamped.
      auto cpu = node.resources.find("CPU");
      here = cpu == node.resources.end() ? 1 : std::max(1, static_cast<int>(cpu->second));
    }
    fit += here;
  }
  return std::max(1, fit);
}

void TunerDriver::check_feasible() const {
  std::map<std::string, double> demand = footprint_;
  if (demand.empty()) return;
  std::map<std::string, double> largest;
  if (!trial_.one_node) {
    std::map<std::string, double> total = gantry::cluster_resources();
    for (const auto& [kind, amount] : demand) {
      if (total[kind] + 1e-9 < amount) {
        throw Error("each trial needs " + describe(demand) + ", more than the whole cluster has (" + describe(total) +
                    "); use fewer or smaller workers, or add nodes");
      }
    }
    return;
  }
  for (const NodeInfo& node : gantry::nodes()) {
    if (!node.alive) continue;
    bool fits = true;
    for (const auto& [kind, amount] : demand) {
      auto it = node.resources.find(kind);
      double have = it == node.resources.end() ? 0 : it->second;
      largest[kind] = std::max(largest[kind], have);
      if (have + 1e-9 < amount) fits = false;
    }
    if (fits) return;
  }
  throw Error("each trial needs " + describe(demand) + ", which no node of the cluster has (the most any node has: " +
              describe(largest) + "); lower TuneConfig::resources_per_trial or add nodes");
}

std::vector<Result> TunerDriver::results() const {
  std::vector<Result> out;
  for (const TrialRecord& t : state_.records()) {
    Result r;
    r.trial_id = t.trial_id;
    r.config = t.config;
    r.metrics = t.last_result;
    r.metrics_history = t.history;
    r.path = (path_ / t.directory).string();
    r.status = t.status;
    if (!t.error.empty()) r.error = t.error;
    if (!t.checkpoints.empty()) r.checkpoint = Checkpoint::at((path_ / t.directory / t.checkpoints.back().directory).string());
    out.push_back(std::move(r));
  }
  return out;
}

ProgressSnapshot TunerDriver::snapshot() const {
  ProgressSnapshot s;
  s.experiment = name_;
  s.path = path_.string();
  s.metric = tune_.metric;
  s.mode = tune_.mode;
  s.elapsed_s = std::chrono::duration<double>(Clock::now() - started_).count();
  std::ostringstream res;
  res << live_.size() << " trial(s) running, each " << describe(footprint_);
  s.resources = res.str();
  s.trials = progress_rows(state_);
  return s;
}

void TunerDriver::say(int level, const std::string& line) {
  if (reporter_) {
    reporter_->line(level, line);
  } else if (run_.verbose >= level) {
    std::cout << line << std::endl;
  }
}

void TunerDriver::settle_after_restore() {
  for (TrialRecord& t : state_.records()) {
    if (t.status == TrialStatus::kRunning) {
      if (restore_.resume_unfinished) {
        record({{"event", "end"}, {"id", t.trial_id}, {"status", "PENDING"}, {"how", "interrupted"}});
      } else {
        record({{"event", "end"}, {"id", t.trial_id}, {"status", "TERMINATED"}, {"how", "interrupted"}});
      }
    } else if (t.status == TrialStatus::kError && (restore_.resume_errored || restore_.restart_errored)) {
      record({{"event", "end"}, {"id", t.trial_id}, {"status", "PENDING"}, {"how", "restored"},
              {"restart", restore_.restart_errored && !restore_.resume_errored}});
    }
  }
}

ResultGrid TunerDriver::fit() {
  if (fitted_) throw Error("Tuner::fit runs once; restore the experiment to continue it");
  fitted_ = true;
  if (!gantry::is_initialized()) throw Error("call gantry::init before Tuner::fit");
  footprint_ = trial_.footprint.empty() ? demand_of(tune_.resources_per_trial) : trial_.footprint;
  check_feasible();
  started_ = Clock::now();
  prepare_experiment();
  dashboard_ = std::make_unique<DashboardRecord>(
      DashboardRecord::Experiment{.name = name_,
                                  .path = path_.string(),
                                  .job_id = gantry::runtime_context().job_id,
                                  .metric = tune_.metric,
                                  .mode = tune_.mode,
                                  .searcher = tune_.search_alg->name(),
                                  .scheduler = tune_.scheduler->name()},
      state_, DashboardRecord::cluster_kv());
  dashboard_->catch_up();  // a restored sweep's trials, replayed from its log
  try {
    return run_trials();
  } catch (const std::exception& e) {
    dashboard_->set_state("failed", e.what());
    throw;
  }
}

ResultGrid TunerDriver::run_trials() {
  record({{"event", "session"}, {"experiment_id", experiment_id_}, {"attempt", state_.sessions + 1}});
  if (restoring_) settle_after_restore();
  const int limit = concurrency_limit();
  reporter_ = std::make_unique<ProgressReporter>(std::cout, ::isatty(1) != 0, run_.verbose,
                                                 std::max(run_.progress_interval, std::chrono::milliseconds(30000)));
  say(1, "sweep " + name_ + " in " + path_.string() + ": up to " + std::to_string(max_trials_) + " trial(s), " +
             std::to_string(limit) + " at a time, searcher " + tune_.search_alg->name() + ", scheduler " +
             tune_.scheduler->name());
  dashboard_->set_state("running");
  auto last_progress = Clock::now() - run_.progress_interval;
  while (true) {
    // Fill the free slots: a new trial from the searcher when none waits, then whichever
    // waiting trial the scheduler picks.
    while (static_cast<int>(live_.size()) < limit && !budget_spent()) {
      if (!has_waiting_trial()) create_trial();
      std::optional<std::string> next = tune_.scheduler->choose_trial_to_run(state_);
      if (!next) break;
      const TrialRecord* t = state_.record(*next);
      if (t == nullptr || (t->status != TrialStatus::kPending && t->status != TrialStatus::kPaused)) break;
      start_trial(*next);
    }
    if (live_.empty()) {
      bool waiting = false;
      const TrialRecord* paused = nullptr;
      for (const TrialRecord& t : state_.records()) {
        if (t.status == TrialStatus::kPending) waiting = true;
        if (t.status == TrialStatus::kPaused && paused == nullptr) paused = &t;
      }
      if (budget_spent()) break;
      if (!waiting && paused != nullptr && state_.searcher_finished) {
        // Nothing runs and nothing new comes: a paused trial would wait for ever.
        say(2, "trial " + paused->trial_id + " resumes: nothing else is left to run");
        start_trial(paused->trial_id);
        continue;
      }
      if (!waiting && paused == nullptr && state_.searcher_finished) break;
      if (!waiting && !state_.searcher_finished) {
        // The searcher asked to wait while nothing runs: no result will ever come to
        // change its mind.
        say(1, "the searcher (" + tune_.search_alg->name() + ") waits with no trial running: the sweep ends here");
        record({{"event", "searcher_finished"}});
        continue;
      }
    }
    poll(std::min<std::chrono::milliseconds>(run_.progress_interval, std::chrono::milliseconds(500)));
    end_cut_trials();
    dashboard_->publish_if_due();
    if (Clock::now() - last_progress >= run_.progress_interval) {
      reporter_->update(snapshot());
      // Appended events survive a killed driver in the page cache; this is for a machine
      // that goes down, and costs one flush per interval instead of one per change.
      log_->sync();
      last_progress = Clock::now();
    }
  }
  // Trials that never started before the budget ran out end here.
  for (TrialRecord& t : state_.records()) {
    if (t.status == TrialStatus::kPending || t.status == TrialStatus::kPaused) {
      record({{"event", "end"}, {"id", t.trial_id}, {"status", "TERMINATED"}, {"how", "budget"}});
    }
  }
  record({{"event", "finished"}});
  log_->sync();
  dashboard_->set_state("finished");
  for (auto& r : idle_runners_) {
    try {
      gantry::kill(r->actor);
    } catch (const std::exception&) {
    }
  }
  idle_runners_.clear();
  files_.clear();
  ResultGrid grid(results(), tune_.metric, tune_.mode, path_.string());
  grid.to_csv((path_ / kResultsFile).string());
  reporter_->finish(snapshot());
  return grid;
}

void TunerDriver::poll(std::chrono::milliseconds timeout) {
  if (live_.empty()) return;
  std::vector<AnyObjectRef> refs;
  refs.reserve(live_.size());
  for (const Live& l : live_) refs.emplace_back(l.next_ref);
  // Every trial whose answer is in, in the order of the live list.
  std::vector<size_t> ready = gantry::wait(refs, 1, timeout).ready;
  std::vector<size_t> done;
  for (size_t i : ready) {
    Live& live = live_[i];
    if (live.runner->info_ref.valid() && !live.runner->info) {
      try {
        live.runner->info = live.runner->info_ref.get(std::chrono::milliseconds(0));
      } catch (const std::exception&) {
        // Not there yet (or the actor died: its run's error says so).
      }
    }
    TrialEvent event;
    try {
      event = live.next_ref.get();
    } catch (const std::exception&) {
      // The actor is gone: its run call carries the error.
      event.kind = TrialEvent::kEnded;
    }
    if (event.kind == TrialEvent::kReport) {
      handle_report(live, event);
    } else if (event.kind == TrialEvent::kEnded) {
      done.push_back(i);
    } else {
      live.next_ref = live.runner->actor.task(&TrialRunner::next).remote(live.run, static_cast<int>(kNoReply), kNextWaitMs);
    }
  }
  // Ending may start the trial again (a retry, an exploit), which appends to live_.
  std::vector<Live> ending;
  for (auto it = done.rbegin(); it != done.rend(); ++it) {
    ending.push_back(std::move(live_[*it]));
    live_.erase(live_.begin() + static_cast<std::ptrdiff_t>(*it));
  }
  for (auto it = ending.rbegin(); it != ending.rend(); ++it) handle_end(*it);
}

}  // namespace detail

// ---- Tuner -------------------------------------------------------------------------------

Tuner::Tuner(Trainable trainable, ParamSpace param_space, TuneConfig tune, RunConfig run)
    : driver_(std::make_unique<detail::TunerDriver>(detail::TrialSpec::of(trainable), std::move(param_space),
                                                    std::move(tune), std::move(run))) {}

Tuner::Tuner(std::unique_ptr<detail::TunerDriver> driver) : driver_(std::move(driver)) {}
Tuner::~Tuner() = default;
Tuner::Tuner(Tuner&&) noexcept = default;
Tuner& Tuner::operator=(Tuner&&) noexcept = default;

Tuner Tuner::restore(const std::string& path, Trainable trainable, RestoreOptions options) {
  return Tuner(detail::TunerDriver::restore(path, detail::TrialSpec::of(trainable), std::move(options)));
}

bool Tuner::can_restore(const std::string& path) {
  fs::path dir = detail::expand_home(path);
  return fs::exists(dir / detail::kTunerFile) && fs::exists(dir / detail::kStateFile);
}

ResultGrid Tuner::fit() { return driver_->fit(); }

namespace detail {

TrialSpec TrialSpec::of(Trainable fn) {
  if (fn == nullptr) throw Error("the Tuner needs a trainable function");
  TrialSpec s;
  s.trainable = trainable_name(fn);
  if (s.trainable.empty()) {
    throw Error("the trainable given to the Tuner is not registered: add GANTRY_TRAINABLE(your_function); at "
                "namespace scope next to it");
  }
  return s;
}

}  // namespace detail
}  // namespace gantry::tune
