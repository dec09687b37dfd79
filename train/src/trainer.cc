#include "gantry/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <system_error>

#include "checkpoint_access.h"
#include "checkpoint_files.h"
#include "checkpoint_manager.h"
#include "dashboard_record.h"
#include "rank_layout.h"
#include "gantry/gantry.h"
#include "train_worker.h"

// The worker actor's functions, registered in the file every driver links.
using gantry::train::detail::TrainWorker;
GANTRY_REMOTE(TrainWorker::create, &TrainWorker::info, &TrainWorker::free_port, &TrainWorker::run, &TrainWorker::poll);

namespace gantry::train {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace detail {
namespace {

constexpr const char* kStateFile = "trainer_state.json";
constexpr auto kPollWait = std::chrono::milliseconds(500);

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string expand_home(const std::string& path) {
  if (path.empty() || path[0] != '~') return path;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "/tmp") + path.substr(1);
}

std::string default_run_name() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "train_%Y-%m-%d_%H-%M-%S", &tm);
  return buf;
}

const char* strategy_name(PlacementStrategy s) {
  switch (s) {
    case PlacementStrategy::kPack: return "PACK";
    case PlacementStrategy::kSpread: return "SPREAD";
    case PlacementStrategy::kStrictPack: return "STRICT_PACK";
    case PlacementStrategy::kStrictSpread: return "STRICT_SPREAD";
  }
  return "PACK";
}

PlacementStrategy strategy_from(const std::string& name) {
  if (name == "SPREAD") return PlacementStrategy::kSpread;
  if (name == "STRICT_PACK") return PlacementStrategy::kStrictPack;
  if (name == "STRICT_SPREAD") return PlacementStrategy::kStrictSpread;
  return PlacementStrategy::kPack;
}

Json options_to_json(const TrainerOptions& o) {
  return Json{{"scaling",
               {{"min_workers", o.scaling.num_workers.min},
                {"max_workers", o.scaling.num_workers.max},
                {"use_gpu", o.scaling.use_gpu},
                {"resources_per_worker", o.scaling.resources_per_worker},
                {"placement_strategy", strategy_name(o.scaling.placement_strategy)}}},
              {"run",
               {{"name", o.run.name},
                {"storage_path", o.run.storage_path},
                {"num_to_keep", o.run.checkpoint.num_to_keep},
                {"score_attribute", o.run.checkpoint.score_attribute},
                {"score_order", o.run.checkpoint.score_order == kMin ? "min" : "max"},
                {"max_failures", o.run.failure.max_failures},
                {"verbose", o.run.verbose},
                {"report_timeout_ms", o.run.report_timeout.count()}}},
              {"config", o.config.json()},
              {"resume_from_checkpoint", o.resume_from_checkpoint ? o.resume_from_checkpoint->path() : ""}};
}

TrainerOptions options_from_json(const Json& j) {
  TrainerOptions o;
  const Json& s = j.at("scaling");
  o.scaling.num_workers = WorkerCount(s.at("min_workers").get<int>(), s.at("max_workers").get<int>());
  o.scaling.use_gpu = s.at("use_gpu").get<bool>();
  o.scaling.resources_per_worker = s.at("resources_per_worker").get<std::map<std::string, double>>();
  o.scaling.placement_strategy = strategy_from(s.at("placement_strategy").get<std::string>());
  const Json& r = j.at("run");
  o.run.name = r.at("name").get<std::string>();
  o.run.storage_path = r.at("storage_path").get<std::string>();
  o.run.checkpoint.num_to_keep = r.at("num_to_keep").get<int>();
  o.run.checkpoint.score_attribute = r.at("score_attribute").get<std::string>();
  o.run.checkpoint.score_order = r.at("score_order").get<std::string>() == "min" ? kMin : kMax;
  o.run.failure.max_failures = r.at("max_failures").get<int>();
  o.run.verbose = r.at("verbose").get<int>();
  o.run.report_timeout = std::chrono::milliseconds(r.at("report_timeout_ms").get<int64_t>());
  o.config = Config(j.at("config"));
  if (std::string from = j.value("resume_from_checkpoint", ""); !from.empty()) {
    o.resume_from_checkpoint = Checkpoint::from_directory(from);
  }
  return o;
}

void write_atomically(const fs::path& file, const std::string& text) {
  fs::path tmp = file;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) throw Error("cannot write " + tmp.string());
  }
  fs::rename(tmp, file);
}

void append_line(const fs::path& file, const std::string& line) {
  std::ofstream out(file, std::ios::app);
  out << line << "\n";
}

std::string format_metric(const Json& v) {
  if (v.is_number_float()) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.4g", v.get<double>());
    return buf;
  }
  return v.is_string() ? v.get<std::string>() : v.dump();
}

}  // namespace

/// The driver side of a run: a small state machine over the worker group (starting,
/// running, restarting, resizing, then finished, failed or stopped) that logs its
/// transitions to events.jsonl in the run's directory and publishes the run's record
/// for the dashboard (dashboard_record.h). Used from the thread that calls fit().
class TrainerDriver {
 public:
  TrainerDriver(TrainLoop loop, TrainerOptions options, std::string restore_path)
      : options_(std::move(options)), restore_path_(std::move(restore_path)), manager_(options_.run.checkpoint) {
    if (loop == nullptr) throw Error("gantry::train::TorchTrainer needs a training loop");
    loop_name_ = train_loop_name(loop);
    if (loop_name_.empty()) {
      throw Error("the training loop given to TorchTrainer is not registered: add GANTRY_TRAIN_LOOP(your_loop); "
                  "at namespace scope next to it");
    }
    validate();
  }

  Result fit();

  TrainerOptions options_;
  std::string loop_name_;

 private:
  struct Group {
    PlacementGroup pg;
    int size = 0;
    std::vector<ActorHandle<TrainWorker>> actors;
    std::vector<WorkerInfo> infos;
    launch::RankLayout layout;
    std::vector<ObjectRef<bool>> runs;
  };
  enum class Outcome { kFinished, kFailed, kResize, kStopped };

  void validate() const;
  Bundle bundle() const;
  void prepare_run_directory();
  void load_previous_run();
  /// The attempts at running the worker group, to the run's end.
  Result run_attempts();
  void event(const std::string& state, const std::string& detail);
  void publish_checkpoints();
  void say(int level, const std::string& line) const;
  int bundles_that_fit() const;
  Group start_group(int attempt);
  Outcome supervise(Group& group, TrainingFailure& failure);
  void process_report(const Group& group, std::vector<ReportRecord>& records);
  void commit_checkpoint(const Group& group, std::vector<ReportRecord>& records, const Json& metrics);
  void teardown(Group& group);
  Result finish(std::optional<TrainingFailure> failure);

  std::string restore_path_;
  CheckpointManager manager_;
  fs::path run_path_;
  std::string run_name_;
  std::string run_id_;
  Clock::time_point started_;
  Clock::time_point last_report_;
  int attempts_ = 0;
  int64_t reports_ = 0;
  bool gpus_ = false;
  bool stop_requested_ = false;  ///< RunConfig::on_report said to end the run
  Result result_;
  std::unique_ptr<DashboardRecord> dashboard_;  ///< from fit()'s start, once the run has its name
};

void TrainerDriver::validate() const {
  const WorkerCount& n = options_.scaling.num_workers;
  if (n.min < 1 || n.max < n.min) {
    throw Error("ScalingConfig::num_workers must be at least 1 (and min <= max), not {" + std::to_string(n.min) +
                ", " + std::to_string(n.max) + "}");
  }
  for (const auto& [name, amount] : options_.scaling.resources_per_worker) {
    if (!(amount >= 0) || !std::isfinite(amount)) {
      throw Error("ScalingConfig::resources_per_worker[\"" + name + "\"] must be a non-negative number");
    }
  }
  if (options_.run.failure.max_failures < -1) throw Error("FailureConfig::max_failures must be -1 or more");
  if (options_.run.checkpoint.num_to_keep < 0) throw Error("CheckpointConfig::num_to_keep must be 0 or more");
  if (options_.run.storage_path.empty()) throw Error("RunConfig::storage_path must not be empty");
}

Bundle TrainerDriver::bundle() const {
  Bundle b = options_.scaling.resources_per_worker;
  if (b.find("CPU") == b.end()) b["CPU"] = 1;
  if (gpus_ && b.find("GPU") == b.end()) b["GPU"] = 1;
  if (!gpus_) b.erase("GPU");
  for (auto it = b.begin(); it != b.end();) it = it->second == 0 ? b.erase(it) : std::next(it);
  return b;
}

void TrainerDriver::say(int level, const std::string& line) const {
  if (options_.run.verbose >= level) std::cout << "[train " << run_name_ << "] " << line << std::endl;
}

void TrainerDriver::event(const std::string& state, const std::string& detail) {
  Json e{{"time", static_cast<double>(std::time(nullptr))}, {"state", state}, {"attempt", attempts_}};
  if (!detail.empty()) e["detail"] = detail;
  append_line(run_path_ / "events.jsonl", e.dump());
  say(2, state + (detail.empty() ? "" : ": " + detail));
  if (dashboard_) dashboard_->set_state(state, state == "failed" ? detail : "");
}

void TrainerDriver::publish_checkpoints() {
  std::vector<DashboardRecord::CheckpointSummary> kept;
  for (const auto& e : manager_.kept()) kept.push_back({e.path, e.iteration, e.metrics});
  dashboard_->set_checkpoints(std::move(kept));
}

void TrainerDriver::prepare_run_directory() {
  if (!restore_path_.empty()) {
    run_path_ = fs::absolute(restore_path_);
    run_name_ = run_path_.filename().string();
    return;
  }
  fs::path storage = expand_home(options_.run.storage_path);
  std::string name = options_.run.name.empty() ? default_run_name() : options_.run.name;
  run_path_ = storage / name;
  run_name_ = name;
  std::error_code ec;
  // A fresh fit never writes into an earlier run's directory: it takes the next free name.
  for (int k = 2; fs::exists(run_path_ / kStateFile, ec); ++k) {
    run_name_ = name + "_" + std::to_string(k);
    run_path_ = storage / run_name_;
  }
  if (run_name_ != name) say(1, "run directory " + (storage / name).string() + " holds an earlier run; using " + run_path_.string());
  fs::create_directories(run_path_, ec);
  if (ec) throw Error("cannot create the run directory " + run_path_.string() + ": " + ec.message());
  Json state = options_to_json(options_);
  state["loop"] = loop_name_;
  write_atomically(run_path_ / kStateFile, state.dump(2) + "\n");
}

void TrainerDriver::load_previous_run() {
  std::error_code ec;
  std::vector<std::pair<int64_t, fs::path>> found;
  for (const auto& entry : fs::directory_iterator(run_path_, ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(".tmp_checkpoint_", 0) == 0) {
      fs::remove_all(entry.path(), ec);  // a commit the killed driver did not finish
    } else if (name.rfind("checkpoint_", 0) == 0 && entry.is_directory()) {
      found.emplace_back(std::stoll(name.substr(11)), entry.path());
    }
  }
  std::sort(found.begin(), found.end());
  for (const auto& [index, path] : found) {
    Checkpoint ck = Checkpoint::from_directory(path.string());
    Json metrics = ck.metadata().value("metrics", Json::object());
    manager_.add({index, path.string(), metrics, ck.metadata().value("report", int64_t{-1}) + 1});
  }
  std::ifstream results(run_path_ / "result.json");
  std::string line;
  while (std::getline(results, line)) {
    if (line.empty()) continue;
    try {
      Json j = Json::parse(line);
      result_.metrics_history.push_back(j);
      reports_ = std::max<int64_t>(reports_, j.value("_report", int64_t{0}) + 1);
    } catch (const Json::exception&) {
      break;  // a line the killed driver did not finish
    }
  }
  std::ifstream events(run_path_ / "events.jsonl");
  while (std::getline(events, line)) {
    try {
      attempts_ = std::max(attempts_, Json::parse(line).value("attempt", 0) + 1);
    } catch (const Json::exception&) {
      break;
    }
  }
  say(1, "restoring " + run_path_.string() + ": " + std::to_string(found.size()) + " checkpoint(s), " +
             std::to_string(result_.metrics_history.size()) + " report(s)");
}

int TrainerDriver::bundles_that_fit() const {
  auto available = available_resources();
  int fit = std::numeric_limits<int>::max();
  for (const auto& [name, amount] : bundle()) {
    double have = available.count(name) != 0 ? available[name] : 0;
    fit = std::min(fit, static_cast<int>(std::floor(have / amount + 1e-9)));
  }
  return fit;
}

TrainerDriver::Group TrainerDriver::start_group(int attempt) {
  Group g;
  const WorkerCount& count = options_.scaling.num_workers;
  int n = count.max;
  if (count.elastic()) n = std::clamp(bundles_that_fit(), count.min, count.max);
  auto started = Clock::now();
  while (true) {
    g.pg = create_placement_group({.bundles = std::vector<Bundle>(static_cast<size_t>(n), bundle()),
                                   .strategy = options_.scaling.placement_strategy});
    if (g.pg.wait(std::chrono::seconds(count.elastic() && n > count.min ? 3 : 10))) break;
    remove_placement_group(g.pg);
    if (count.elastic() && n > count.min) {
      --n;
      continue;
    }
    say(1, "waiting for resources: " + std::to_string(n) + " worker(s) of " + Json(bundle()).dump() + " (" +
               std::to_string(static_cast<int>(seconds_since(started))) + " s)");
  }
  g.size = n;
  for (int i = 0; i < n; ++i) {
    const Bundle b = bundle();
    ActorOptions opts;
    opts.max_concurrency = 2;
    opts.scheduling = SchedulingStrategy::placement_group(g.pg, i);
    for (const auto& [name, amount] : b) {
      if (name == "CPU") opts.num_cpus = amount;
      else if (name == "GPU") opts.num_gpus = amount;
      else if (name == "memory") opts.memory = amount;
      else opts.resources[name] = amount;
    }
    g.actors.push_back(actor(TrainWorker::create).options(opts).remote());
  }
  std::vector<ObjectRef<WorkerInfo>> infos;
  for (auto& a : g.actors) infos.push_back(a.task(&TrainWorker::info).remote());
  std::vector<launch::WorkerPlacement> placements;
  for (auto& ref : infos) {
    g.infos.push_back(ref.get(std::chrono::minutes(2)));
    placements.push_back({g.infos.back().node_id, ""});
  }
  g.layout = launch::assign_ranks(placements);
  std::vector<DashboardRecord::Worker> workers;
  for (int i = 0; i < n; ++i) {
    const WorkerInfo& info = g.infos[static_cast<size_t>(i)];
    workers.push_back({g.layout.workers[static_cast<size_t>(i)].rank, info.node_id, info.pid, info.gpu_ids});
  }
  std::sort(workers.begin(), workers.end(), [](const auto& a, const auto& b) { return a.rank < b.rank; });
  dashboard_->set_workers(std::move(workers));
  auto first = static_cast<size_t>(g.layout.worker_of_rank[0]);
  int port = g.actors[first].task(&TrainWorker::free_port).remote().get(std::chrono::minutes(1));

  CheckpointFiles files;
  std::optional<std::string> from;
  if (auto latest = manager_.latest()) {
    from = latest->path;
  } else if (options_.resume_from_checkpoint.has_value()) {
    from = options_.resume_from_checkpoint->path();
  }
  if (from.has_value()) {
    fs::path dir(*from);
    files = read_checkpoint_files(dir);
    say(1, (attempt == 0 ? "resuming from " : "restarting from ") + dir.filename().string());
  }
  ObjectRef<CheckpointFiles> checkpoint = put(files);
  Bundle b = bundle();
  int cpus = static_cast<int>(std::max(1.0, std::floor(b.count("CPU") != 0 ? b["CPU"] : 1)));
  for (int i = 0; i < n; ++i) {
    WorkerStart s;
    s.loop_name = loop_name_;
    s.config_json = options_.config.json().dump();
    s.run_name = run_name_;
    s.run_id = run_id_;
    s.storage_path = run_path_.parent_path().string();
    s.run_path = run_path_.string();
    s.group = "gantry-train." + run_id_ + "." + std::to_string(attempt);
    const launch::RankAssignment& ranks = g.layout.workers[static_cast<size_t>(i)];
    s.world_rank = ranks.rank;
    s.local_rank = ranks.local_rank;
    s.world_size = n;
    s.local_world_size = ranks.local_world_size;
    s.node_rank = ranks.node_rank;
    s.master_addr = g.infos[first].node_ip;
    s.master_port = port;
    s.restart_count = attempt;
    s.max_restarts = options_.run.failure.max_failures;
    s.use_gpu = gpus_;
    s.cpus = cpus;
    s.report_timeout_ms = options_.run.report_timeout.count();
    g.runs.push_back(g.actors[i].task(&TrainWorker::run).remote(s, checkpoint));
  }
  event("running", std::to_string(n) + " worker(s) on " + std::to_string(g.layout.num_nodes) + " node(s)");
  return g;
}

TrainerDriver::Outcome TrainerDriver::supervise(Group& g, TrainingFailure& failure) {
  size_t n = static_cast<size_t>(g.size);
  std::vector<ObjectRef<PollResult>> polls(n);
  std::vector<bool> finished(n, false);
  std::map<int64_t, std::vector<ReportRecord>> pending;  // report index -> by world rank
  std::map<int64_t, size_t> arrived;
  for (size_t i = 0; i < n; ++i) polls[i] = g.actors[i].task(&TrainWorker::poll).remote(kPollWait.count());
  auto fail = [&](size_t i, const std::string& what) {
    failure.rank = g.layout.workers[i].rank;
    failure.node_id = g.infos[i].node_id;
    failure.message = what;
    return Outcome::kFailed;
  };
  auto last_grow_check = Clock::now();
  const WorkerCount& count = options_.scaling.num_workers;
  while (true) {
    std::vector<AnyObjectRef> waiting;
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i) {
      if (finished[i]) continue;
      waiting.emplace_back(polls[i]);
      who.push_back(i);
    }
    if (waiting.empty()) return Outcome::kFinished;
    WaitIndices ready = wait(waiting, 1, std::chrono::milliseconds(1000));
    for (size_t k : ready.ready) {
      size_t i = who[k];
      PollResult got;
      try {
        got = polls[i].get();
      } catch (const std::exception& e) {
        return fail(i, e.what());
      }
      for (auto& record : got.reports) {
        auto& slot = pending[record.index];
        slot.resize(n);
        int64_t index = record.index;
        slot[static_cast<size_t>(g.layout.workers[i].rank)] = std::move(record);
        if (++arrived[index] == n) {
          process_report(g, slot);
          pending.erase(index);
          arrived.erase(index);
        }
      }
      if (got.finished) {
        finished[i] = true;
        try {
          g.runs[i].get();
        } catch (const std::exception& e) {
          return fail(i, e.what());
        }
      } else {
        polls[i] = g.actors[i].task(&TrainWorker::poll).remote(kPollWait.count());
      }
    }
    dashboard_->publish_if_due();
    if (stop_requested_) return Outcome::kStopped;
    if (count.elastic() && g.size < count.max && seconds_since(last_grow_check) > 2) {
      last_grow_check = Clock::now();
      if (bundles_that_fit() >= 1) return Outcome::kResize;
    }
  }
}

void TrainerDriver::process_report(const Group& g, std::vector<ReportRecord>& records) {
  Json metrics = Json::parse(records[0].metrics_json);
  int64_t samples = 0;
  result_.worker_metrics.resize(std::max(result_.worker_metrics.size(), records.size()));
  for (size_t r = 0; r < records.size(); ++r) {
    Json m = Json::parse(records[r].metrics_json);
    append_line(run_path_ / "worker_metrics.jsonl", Json{{"report", reports_}, {"rank", r}, {"metrics", m}}.dump());
    result_.worker_metrics[r].push_back(std::move(m));
    samples += records[r].samples;
  }
  double elapsed = seconds_since(started_);
  double interval = seconds_since(last_report_);
  last_report_ = Clock::now();
  bool has_checkpoint = std::any_of(records.begin(), records.end(), [](const ReportRecord& r) { return !r.checkpoint.empty(); });
  if (has_checkpoint) commit_checkpoint(g, records, metrics);
  Json line = metrics;
  line["_report"] = reports_;
  line["_time_s"] = elapsed;
  line["_attempt"] = attempts_;
  line["_world_size"] = g.size;
  if (has_checkpoint) line["_checkpoint"] = fs::path(manager_.latest()->path).filename().string();
  append_line(run_path_ / "result.json", line.dump());
  result_.metrics_history.push_back(metrics);
  ++reports_;
  dashboard_->add_report(reports_, metrics, unix_now());

  std::ostringstream text;
  text << "report " << reports_ - 1 << ":";
  for (auto it = metrics.begin(); it != metrics.end(); ++it) text << " " << it.key() << "=" << format_metric(it.value());
  char tail[96];
  std::snprintf(tail, sizeof(tail), " (%.1f s", elapsed);
  text << tail;
  if (samples > 0 && interval > 0) {
    std::snprintf(tail, sizeof(tail), ", %.0f samples/s", static_cast<double>(samples) / interval);
    text << tail;
  }
  text << ")";
  say(1, text.str());
  if (options_.run.on_report) {
    std::optional<Checkpoint> checkpoint;
    if (has_checkpoint) checkpoint = Checkpoint::from_directory(manager_.latest()->path);
    if (!options_.run.on_report(metrics, checkpoint)) stop_requested_ = true;
  }
}

void TrainerDriver::commit_checkpoint(const Group& g, std::vector<ReportRecord>& records, const Json& metrics) {
  int64_t index = manager_.next_index();
  char name[32];
  std::snprintf(name, sizeof(name), "checkpoint_%06lld", static_cast<long long>(index));
  fs::path final_dir = run_path_ / name;
  fs::path tmp = run_path_ / (std::string(".tmp_") + name);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  Json metadata = Json::object();
  std::map<std::string, size_t> writer;  // file -> rank that wrote it
  for (size_t r = 0; r < records.size(); ++r) {
    CheckpointFiles& files = records[r].checkpoint;
    if (files.empty() || (r != 0 && !records[r].all_ranks)) continue;
    if (r == 0 && !files.metadata_json.empty()) metadata = Json::parse(files.metadata_json);
    for (auto& [rel, bytes] : files.files) {
      if (auto [it, fresh] = writer.emplace(rel, r); !fresh) {
        // Ranks often save the same replica (model.pt): equal bytes are one file.
        if (records[it->second].checkpoint.files[rel] != bytes) {
          say(2, "checkpoint file " + rel + " of rank " + std::to_string(r) + " differs from rank " +
                     std::to_string(it->second) + "'s of the same name: kept rank " + std::to_string(it->second) +
                     "'s (use distinct names for sharded state)");
        }
        continue;
      }
      write_checkpoint_file(tmp, rel, bytes);
    }
  }
  metadata["metrics"] = metrics;
  metadata["report"] = reports_;
  metadata["world_size"] = g.size;
  { std::ofstream(tmp / Checkpoint::kMetadataFile) << metadata.dump(2) << "\n"; }
  fs::rename(tmp, final_dir);  // the commit: a checkpoint directory is whole or absent
  for (const auto& gone : manager_.add({index, final_dir.string(), metrics, reports_ + 1})) {
    fs::remove_all(gone.path, ec);
  }
  publish_checkpoints();
}

void TrainerDriver::teardown(Group& g) {
  for (auto& a : g.actors) {
    try {
      kill(a);
    } catch (const std::exception&) {
      // Already dead: nothing to stop.
    }
  }
  try {
    if (!g.pg.id().empty()) remove_placement_group(g.pg);
  } catch (const std::exception&) {
  }
}

Result TrainerDriver::finish(std::optional<TrainingFailure> failure) {
  Result& r = result_;
  r.path = run_path_.string();
  if (!r.metrics_history.empty()) r.metrics = r.metrics_history.back();
  for (const auto& e : manager_.kept()) r.best_checkpoints.push_back(Checkpoint::from_directory(e.path));
  if (auto latest = manager_.latest()) r.checkpoint = Checkpoint::from_directory(latest->path);
  r.error = std::move(failure);
  if (r.error) {
    r.error->attempts = attempts_;
    event("failed", r.error->message);
    say(1, "failed after " + std::to_string(attempts_) + " attempt(s): rank " + std::to_string(r.error->rank) +
               " on node " + r.error->node_id.substr(0, 12) + ": " + r.error->message);
  } else {
    // A run on_report ended is stopped, not finished: the dashboard tells them apart.
    const char* state = stop_requested_ ? "stopped" : "finished";
    event(state, stop_requested_ ? "on_report asked to end the run" : "");
    char line[160];
    std::snprintf(line, sizeof(line), "%s: %lld report(s) in %.1f s, %d restart(s)", state,
                  static_cast<long long>(reports_), seconds_since(started_), std::max(0, attempts_ - 1));
    say(1, std::string(line) + (r.checkpoint ? "; latest checkpoint " + r.checkpoint->path() : ""));
  }
  return r;
}

Result TrainerDriver::fit() {
  if (!is_initialized()) throw Error("call gantry::init before TorchTrainer::fit");
  result_ = Result{};
  stop_requested_ = false;
  gpus_ = options_.scaling.use_gpu;
  if (gpus_) {
    auto total = cluster_resources();
    if (total.count("GPU") == 0 || total["GPU"] <= 0) {
      gpus_ = false;
      std::cout << "[train] use_gpu is set but the cluster has no GPUs: training on CPUs" << std::endl;
    }
  }
  prepare_run_directory();
  dashboard_ = std::make_unique<DashboardRecord>(run_name_, run_path_.string(), runtime_context().job_id,
                                                 options_.scaling.num_workers.max, gpus_,
                                                 DashboardRecord::cluster_kv());
  if (!restore_path_.empty()) {
    load_previous_run();
    for (const Json& line : result_.metrics_history) {
      Json metrics = Json::object();
      for (auto it = line.begin(); it != line.end(); ++it) {
        if (it.key().rfind('_', 0) != 0) metrics[it.key()] = it.value();  // not the driver's own "_report", ...
      }
      dashboard_->add_report(line.value("_report", int64_t{0}) + 1, metrics, std::nullopt);
    }
    publish_checkpoints();
  }
  run_id_ = run_name_ + "-" + std::to_string(getpid()) + "-" + std::to_string(std::time(nullptr));
  started_ = last_report_ = Clock::now();
  try {
    return run_attempts();
  } catch (const std::exception& e) {
    // A run that ends with an exception (no resources at all, a file it cannot write)
    // is failed on the dashboard too.
    dashboard_->set_state("failed", e.what());
    throw;
  }
}

Result TrainerDriver::run_attempts() {
  int failures = 0;
  std::optional<TrainingFailure> failure;
  while (true) {
    TrainingFailure why;
    Outcome outcome;
    Group g;
    event(attempts_ == 0 ? "starting" : "restarting", "");
    try {
      g = start_group(attempts_);
      outcome = supervise(g, why);
    } catch (const InfeasibleError&) {
      teardown(g);
      throw;
    } catch (const std::exception& e) {
      why.message = e.what();
      outcome = Outcome::kFailed;
    }
    teardown(g);
    ++attempts_;
    if (outcome == Outcome::kFinished || outcome == Outcome::kStopped) break;
    int max = options_.run.failure.max_failures;
    if (outcome == Outcome::kResize) {
      event("resizing", "room for more workers than " + std::to_string(g.size));
    } else {
      dashboard_->add_failure();
      say(1, "worker group failed: rank " + std::to_string(why.rank) + " on node " + why.node_id.substr(0, 12) +
                 ": " + why.message);
    }
    ++failures;
    if (max >= 0 && failures > max) {
      failure = why;
      if (outcome == Outcome::kResize) failure->message = "the group could grow, but max_failures is spent";
      break;
    }
    say(1, "restart " + std::to_string(failures) + (max < 0 ? "" : " of " + std::to_string(max)) +
               " from the latest checkpoint");
  }
  return finish(std::move(failure));
}

}  // namespace detail

TorchTrainer::TorchTrainer(TrainLoop loop, TrainerOptions options)
    : driver_(std::make_unique<detail::TrainerDriver>(loop, std::move(options), "")) {}

TorchTrainer::~TorchTrainer() = default;
TorchTrainer::TorchTrainer(TorchTrainer&&) noexcept = default;
TorchTrainer& TorchTrainer::operator=(TorchTrainer&&) noexcept = default;

TorchTrainer TorchTrainer::restore(const std::string& path, TrainLoop loop) {
  fs::path dir = detail::expand_home(path);
  std::ifstream in(dir / detail::kStateFile);
  if (!in) throw Error("no training run at " + dir.string() + " (it has no " + detail::kStateFile + ")");
  Json state;
  TrainerOptions options;
  try {
    state = Json::parse(in);
    options = detail::options_from_json(state);
  } catch (const Json::exception& e) {
    throw Error(dir.string() + "/" + detail::kStateFile + " is damaged: " + e.what());
  }
  TorchTrainer trainer(loop, TrainerOptions{});
  trainer.driver_ = std::make_unique<detail::TrainerDriver>(loop, std::move(options), dir.string());
  std::string saved = state.value("loop", "");
  if (!saved.empty() && saved != trainer.driver_->loop_name_) {
    throw Error("the run at " + dir.string() + " was trained with loop " + saved + ", not " +
                trainer.driver_->loop_name_);
  }
  return trainer;
}

Json TorchTrainer::to_json() const {
  return Json{{"loop", driver_->loop_name_}, {"options", detail::options_to_json(driver_->options_)}};
}

TorchTrainer TorchTrainer::from_json(const Json& spec, const std::function<void(TrainerOptions&)>& adjust) {
  if (!spec.is_object() || !spec.contains("loop") || !spec.contains("options")) {
    throw Error("not a trainer's JSON (TorchTrainer::to_json gives one): " + spec.dump().substr(0, 200));
  }
  std::string name = spec["loop"].get<std::string>();
  TrainLoop loop = detail::find_train_loop(name);
  if (loop == nullptr) {
    throw Error("no training loop is registered as \"" + name + "\" in this executable: add GANTRY_TRAIN_LOOP(" +
                name + "); next to it");
  }
  TrainerOptions options;
  try {
    options = detail::options_from_json(spec["options"]);
  } catch (const Json::exception& e) {
    throw Error(std::string("a trainer's JSON has damaged options: ") + e.what());
  }
  if (adjust) adjust(options);
  return TorchTrainer(loop, std::move(options));
}

Result TorchTrainer::fit() { return driver_->fit(); }
const TrainerOptions& TorchTrainer::options() const { return driver_->options_; }
const std::string& TorchTrainer::loop_name() const { return driver_->loop_name_; }

}  // namespace gantry::train
