#include "dashboard/cluster_source.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>

#include "dashboard/node_metrics.h"
#include "dashboard/prometheus_text.h"
#include "gantry/ids.h"
#include "scheduler/resource_set.h"

namespace gantry::internal {
namespace {

constexpr auto kHeadDeadline = std::chrono::seconds(5);
constexpr auto kPeerDeadline = std::chrono::seconds(3);  // a busy worker or agent still answers
constexpr const char* kPublishedPrefix = "gantry.dashboard/";
constexpr int kRunningListed = 200;
constexpr int kFailuresListed = 100;

void set_deadline(grpc::ClientContext& ctx, std::chrono::seconds d) {
  ctx.set_deadline(std::chrono::system_clock::now() + d);
}

// Calls the head; its failure is the API's (502 with the head's reason).
template <typename Stub, typename Req, typename Reply, typename Method>
Reply call_head(Stub& stub, Method method, const Req& req, const char* what) {
  grpc::ClientContext ctx;
  set_deadline(ctx, kHeadDeadline);
  Reply reply;
  grpc::Status s = (stub.*method)(&ctx, req, &reply);
  if (!s.ok()) {
    int status = s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ? 400
                 : s.error_code() == grpc::StatusCode::NOT_FOUND      ? 404
                                                                      : 502;
    throw ApiError{status, std::string(what) + ": " + s.error_message()};
  }
  return reply;
}

std::string hex_id(const std::string& binary) {
  return binary.size() == 16 ? UniqueId::from_binary(binary).hex() : std::string();
}

double unix_seconds_ms(int64_t ms) { return static_cast<double>(ms) / 1000.0; }
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

UniqueId parse_id(const std::string& hex, const char* what) {
  if (hex.size() != 32 || hex.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw ApiError{400, std::string(what) + " must be 32 lowercase hex digits, not '" + hex + "'"};
  return UniqueId::from_hex(hex);
}

Json submission_json(const proto::Submission& s) {
  std::string entry;
  for (const auto& a : s.entrypoint()) entry += (entry.empty() ? "" : " ") + a;
  static const char* kStatus[] = {"RUNNING", "SUCCEEDED", "FAILED", "STOPPED"};
  int st = static_cast<int>(s.status());
  Json j{{"job_id", s.id()},
         {"type", "SUBMISSION"},
         {"entrypoint", entry},
         {"status", st >= 0 && st < 4 ? kStatus[st] : "UNKNOWN"},
         {"start_time", unix_seconds_ms(s.start_time_ms())},
         {"end_time", s.end_time_ms() ? Json(unix_seconds_ms(s.end_time_ms())) : Json(nullptr)},
         {"exit_code", s.status() == proto::Submission::RUNNING ? Json(nullptr) : Json(s.exit_code())},
         {"message", s.message()},
         {"pid", s.pid()},
         {"working_dir", s.working_dir()}};
  return j;
}

const char* actor_state_name(proto::ActorInfo::State s) {
  switch (s) {
    case proto::ActorInfo::PENDING: return "PENDING";
    case proto::ActorInfo::ALIVE: return "ALIVE";
    case proto::ActorInfo::RESTARTING: return "RESTARTING";
    case proto::ActorInfo::DEAD: return "DEAD";
    default: return "UNKNOWN";
  }
}

// Drops a published record's bulky parts for the list views.
Json summary_of(Json record) {
  for (const char* bulky : {"history", "checkpoints", "trials"}) record.erase(bulky);
  return record;
}

}  // namespace

Json resources_json(const proto::Resources& r) {
  Json out = Json::object();
  std::map<std::string, int64_t> sorted(r.quantities().begin(), r.quantities().end());
  for (const auto& [k, v] : sorted) out[k] = static_cast<double>(v) / kResourceUnit;
  return out;
}

ClusterSource::ClusterSource(std::string head_address) : head_address_(std::move(head_address)) {
  auto channel = make_channel(head_address_);
  head_ = proto::Head::NewStub(channel);
  jobs_ = proto::JobService::NewStub(channel);
}

std::vector<ClusterSource::NodeEntry> ClusterSource::gather_nodes() {
  auto list = call_head<proto::Head::Stub, proto::Empty, proto::ListNodesReply>(*head_, &proto::Head::Stub::ListNodes,
                                                                                 proto::Empty(), "cannot list nodes");
  std::vector<NodeEntry> out;
  for (const auto& n : list.nodes()) {
    NodeEntry e;
    e.info = n;
    if (n.alive()) {
      auto agent = proto::NodeAgent::NewStub(channels_.get(n.agent_address()));
      grpc::ClientContext ctx;
      set_deadline(ctx, kPeerDeadline);
      e.answered = agent->GetNodeStats(&ctx, proto::Empty(), &e.stats).ok();
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::shared_ptr<const std::vector<ClusterSource::NodeEntry>> ClusterSource::cached_nodes() {
  return nodes_cache_.get([this] { return gather_nodes(); });
}

std::vector<ClusterSource::Owner> ClusterSource::owners(int* unreachable_nodes) {
  return owners_of(*cached_nodes(), unreachable_nodes);
}

std::vector<ClusterSource::Owner> ClusterSource::owners_of(const std::vector<NodeEntry>& nodes, int* unreachable_nodes) {
  std::vector<Owner> out;
  auto jobs = call_head<proto::Head::Stub, proto::Empty, proto::ListJobsReply>(*head_, &proto::Head::Stub::ListJobs,
                                                                               proto::Empty(), "cannot list jobs");
  for (const auto& job : jobs.jobs())
    if (job.state() == proto::JobSpec::RUNNING && !job.driver_address().empty())
      out.push_back({job.driver_address(), "", false});
  for (const auto& n : nodes) {
    if (n.info.alive() && !n.answered && unreachable_nodes) ++*unreachable_nodes;
    if (n.answered)
      for (const auto& w : n.stats.worker_addresses()) out.push_back({w, hex_id(n.info.node_id()), true});
  }
  return out;
}

void ClusterSource::tally(const std::vector<NodeEntry>& nodes, TaskGather& g) {
  std::set<std::string> answered_nodes, live_nodes, listed;
  for (const auto& n : nodes) {
    std::string id = hex_id(n.info.node_id());
    if (n.info.alive()) live_nodes.insert(id);
    if (!n.answered) continue;
    answered_nodes.insert(id);
    for (const auto& w : n.stats.worker_addresses()) listed.insert(w);
  }
  std::lock_guard<std::mutex> lock(tally_mu_);
  auto retire = [this](const WorkerTally& t) { t.add_to(retired_functions_, retired_actors_); };
  for (const WorkerEvents& w : g.executed) {
    WorkerTally now;
    now.pid = w.events.pid();
    now.node_id = w.node_id;
    for (const auto& c : w.events.counts()) now.by_function[c.name()] = {c.finished(), c.failed()};
    now.actor_id = w.events.actor_id();
    now.actor_calls = {w.events.actor_calls().finished(), w.events.actor_calls().failed()};
    auto it = tallies_.find(w.address);
    if (it != tallies_.end() && it->second.pid != now.pid) retire(it->second);  // a new worker at that address
    tallies_[w.address] = std::move(now);
  }
  // A worker is gone when its node died or its node's agent no longer lists it. One that
  // did not answer, or whose agent did not, keeps the counts it last gave.
  for (auto it = tallies_.begin(); it != tallies_.end();) {
    const WorkerTally& t = it->second;
    bool gone = !live_nodes.count(t.node_id) || (answered_nodes.count(t.node_id) && !listed.count(it->first));
    if (gone) {
      retire(t);
      it = tallies_.erase(it);
    } else {
      ++it;
    }
  }
  g.ended_by_function = retired_functions_;
  g.ended_by_actor = retired_actors_;
  for (const auto& [address, t] : tallies_) t.add_to(g.ended_by_function, g.ended_by_actor);
}

ClusterSource::TaskGather ClusterSource::gather_tasks(int events_limit, bool ended) {
  TaskGather g;
  auto nodes = cached_nodes();
  for (const Owner& p : owners_of(*nodes, nullptr)) {
    ++g.asked;
    auto stub = proto::WorkerService::NewStub(channels_.get(p.address));
    bool answered = false;
    {
      grpc::ClientContext ctx;
      set_deadline(ctx, kPeerDeadline);
      proto::ListOwnedRequest req;
      req.set_tasks(true);
      req.set_limit(1000);
      proto::OwnedState owned;
      if (stub->ListOwned(&ctx, req, &owned).ok()) {
        answered = true;
        g.owned.push_back(std::move(owned));
      }
    }
    if (p.executes) {
      grpc::ClientContext ctx;
      set_deadline(ctx, kPeerDeadline);
      proto::TaskEventsRequest req;
      req.set_limit(events_limit);
      // Only the running ones: executions that ended by now are left out.
      if (!ended) req.set_since_us(static_cast<uint64_t>(now_seconds() * 1e6) + 1);
      WorkerEvents w{p.address, p.node_id, {}};
      if (stub->GetTaskEvents(&ctx, req, &w.events).ok()) {
        answered = true;
        g.executed.push_back(std::move(w));
      }
    }
    if (!answered) ++g.silent;  // it may have just exited
  }
  tally(*nodes, g);
  return g;
}

std::shared_ptr<const ClusterSource::TaskGather> ClusterSource::cached_tasks() {
  return tasks_cache_.get([this] { return gather_tasks(kRunningListed, /*ended=*/false); });
}

Json ClusterSource::nodes() {
  auto nodes = cached_nodes();
  Json out = Json::array();
  bool first = true;
  for (const auto& n : *nodes) {
    const proto::NodeStats& s = n.stats;
    Json node{{"node_id", hex_id(n.info.node_id())},
              {"hostname", n.info.hostname()},
              {"address", n.info.agent_address()},
              {"alive", n.info.alive()},
              {"answered", n.answered},
              {"is_head", first}};
    first = false;
    node["resources"] = {{"total", resources_json(n.answered ? s.total() : n.info.total())},
                         {"available", n.answered ? resources_json(s.available()) : Json::object()}};
    if (n.answered) {
      node["object_store"] = {{"used_bytes", s.store_used()},
                              {"capacity_bytes", s.store_capacity()},
                              {"objects", s.store_objects()},
                              {"evicted", s.store_evicted()}};
      node["workers"] = {{"total", s.num_workers()}, {"idle", s.num_idle_workers()}};
      node["cpu"] = {{"utilization", s.cpu_utilization() >= 0 ? Json(s.cpu_utilization()) : Json(nullptr)},
                     {"cores", s.cpu_cores()}};
      node["memory"] = {{"used_bytes", s.memory_total() ? Json(s.memory_used()) : Json(nullptr)},
                        {"total_bytes", s.memory_total() ? Json(s.memory_total()) : Json(nullptr)}};
      Json gpus = Json::array();
      for (const auto& g : s.gpus()) {
        bool known = g.memory_total() > 0;
        gpus.push_back({{"index", g.index()},
                        {"name", g.name()},
                        {"logical", g.logical()},
                        {"in_use", g.in_use()},
                        {"utilization", g.utilization() >= 0 ? Json(g.utilization()) : Json(nullptr)},
                        {"memory_used_bytes", known ? Json(g.memory_used()) : Json(nullptr)},
                        {"memory_total_bytes", known ? Json(g.memory_total()) : Json(nullptr)}});
      }
      node["gpus"] = std::move(gpus);
      Json workers = Json::array();
      for (int i = 0; i < s.worker_addresses_size(); ++i)
        workers.push_back({{"address", s.worker_addresses(i)}, {"pid", i < s.worker_pids_size() ? s.worker_pids(i) : 0}});
      node["worker_processes"] = std::move(workers);
    } else {
      node["gpus"] = Json::array();
    }
    out.push_back(std::move(node));
  }
  return {{"nodes", std::move(out)}};
}

std::shared_ptr<const proto::ListActorsReply> ClusterSource::list_actors() {
  // The head keeps dead actors too; a listing of thousands costs it a few ms each time.
  return actors_cache_.get([this] {
    return call_head<proto::Head::Stub, proto::Empty, proto::ListActorsReply>(*head_, &proto::Head::Stub::ListActors,
                                                                              proto::Empty(), "cannot list actors");
  });
}

Json ClusterSource::actors(int dead_limit) {
  auto list = list_actors();
  auto tasks = cached_tasks();
  // The actor's own calls (its worker may have run plain tasks before it hosted the actor),
  // those of its earlier incarnations included.
  std::map<std::string, Json> calls;  // actor id (binary) -> counts
  for (const auto& [actor, e] : tasks->ended_by_actor)
    calls[actor] = {{"finished", e.finished}, {"failed", e.failed}, {"running", 0}};
  for (const auto& w : tasks->executed)
    if (!w.events.actor_id().empty() && calls.count(w.events.actor_id()))
      calls[w.events.actor_id()]["running"] = w.events.actor_calls().running();
  std::vector<const proto::ActorInfo*> sorted;
  for (const auto& a : list->actors()) sorted.push_back(&a);
  // Live ones first, then by class and name: a stable order for the page.
  std::sort(sorted.begin(), sorted.end(), [](const proto::ActorInfo* a, const proto::ActorInfo* b) {
    bool da = a->state() == proto::ActorInfo::DEAD, db = b->state() == proto::ActorInfo::DEAD;
    if (da != db) return db;
    if (a->class_name() != b->class_name()) return a->class_name() < b->class_name();
    return a->actor_id() < b->actor_id();
  });
  Json out = Json::array();
  int dead_listed = 0, dead_not_listed = 0;
  for (const proto::ActorInfo* a : sorted) {
    if (a->state() == proto::ActorInfo::DEAD && dead_listed++ >= dead_limit) {
      ++dead_not_listed;
      continue;
    }
    auto c = calls.find(a->actor_id());
    out.push_back({{"actor_id", hex_id(a->actor_id())},
                   {"class_name", a->class_name()},
                   {"name", a->name()},
                   {"state", actor_state_name(a->state())},
                   {"node_id", a->node_id()},
                   {"pid", a->pid()},
                   {"job_id", hex_id(a->job_id())},
                   {"address", a->address()},
                   {"resources", resources_json(a->resources())},
                   {"restarts", a->num_restarts()},
                   {"detached", a->detached()},
                   {"death_cause", a->has_death_cause() ? Json(a->death_cause().message()) : Json(nullptr)},
                   {"calls", c != calls.end() ? c->second : Json{{"finished", 0}, {"failed", 0}, {"running", 0}}}});
  }
  return {{"actors", std::move(out)}, {"dead_not_listed", dead_not_listed}};
}

void ClusterSource::kill_actor(const std::string& actor_id_hex, bool no_restart) {
  UniqueId id = parse_id(actor_id_hex, "an actor id");
  bool known = false;
  actors_cache_.clear();  // an actor made since the last listing may be the one asked for
  auto list = list_actors();
  for (const auto& a : list->actors()) known |= a.actor_id() == id.binary();
  if (!known) throw ApiError{404, "no actor " + actor_id_hex};
  proto::KillActorRequest req;
  req.set_actor_id(id.binary());
  req.set_no_restart(no_restart);
  call_head<proto::Head::Stub, proto::KillActorRequest, proto::Empty>(*head_, &proto::Head::Stub::KillActor, req,
                                                                      "cannot kill the actor");
  actors_cache_.clear();  // the next view shows it dying
}

Json ClusterSource::tasks() {
  auto g = cached_tasks();
  struct Counts {
    int64_t pending = 0, running = 0, finished = 0, failed = 0;
  };
  std::map<std::string, Counts> by_name;
  for (const auto& [name, e] : g->ended_by_function) {
    by_name[name].finished = e.finished;
    by_name[name].failed = e.failed;
  }
  for (const auto& o : g->owned)
    for (const auto& t : o.tasks())
      if (t.state() != "SUBMITTED") ++by_name[t.name()].pending;
  Json running = Json::array();
  struct Failure {
    uint64_t time_us;
    Json row;
  };
  std::vector<Failure> failures;
  for (const auto& w : g->executed) {
    for (const auto& c : w.events.counts()) {
      by_name[c.name()].running += c.running();  // finished and failed: from the totals above
    }
    for (const auto& x : w.events.executions()) {
      if (x.end_us() != 0 || static_cast<int>(running.size()) >= kRunningListed) continue;
      running.push_back({{"task_id", hex_id(x.task_id())},
                         {"name", x.name()},
                         {"node_id", w.node_id},
                         {"pid", w.events.pid()},
                         {"started", static_cast<double>(x.start_us()) / 1e6},
                         {"actor_id", hex_id(w.events.actor_id())}});
    }
    for (const auto& f : w.events.failures())
      failures.push_back({f.time_us(),
                          {{"task_id", hex_id(f.task_id())},
                           {"name", f.name()},
                           {"time", static_cast<double>(f.time_us()) / 1e6},
                           {"error_type", f.error_type()},
                           {"message", f.message()},
                           {"node_id", w.node_id},
                           {"pid", w.events.pid()}}});
  }
  std::sort(failures.begin(), failures.end(), [](const Failure& a, const Failure& b) { return a.time_us > b.time_us; });
  Json recent = Json::array();
  for (size_t i = 0; i < failures.size() && i < static_cast<size_t>(kFailuresListed); ++i)
    recent.push_back(failures[i].row);
  Json functions = Json::array();
  for (const auto& [name, c] : by_name)
    functions.push_back(
        {{"name", name}, {"pending", c.pending}, {"running", c.running}, {"finished", c.finished}, {"failed", c.failed}});
  return {{"functions", std::move(functions)},
          {"running", std::move(running)},
          {"recent_failures", std::move(recent)},
          {"owners_asked", g->asked},
          {"owners_silent", g->silent}};
}

Json ClusterSource::objects() {
  auto nodes = cached_nodes();
  Json by_node = Json::array();
  for (const auto& n : *nodes)
    if (n.answered)
      by_node.push_back({{"node_id", hex_id(n.info.node_id())},
                         {"objects", n.stats.store_objects()},
                         {"bytes", n.stats.store_used()}});
  Json by_owner = Json::array();
  bool truncated = false;
  for (const Owner& owner : owners()) {
    auto stub = proto::WorkerService::NewStub(channels_.get(owner.address));
    grpc::ClientContext ctx;
    set_deadline(ctx, kPeerDeadline);
    proto::ListOwnedRequest req;
    req.set_objects(true);
    req.set_limit(10000);
    proto::OwnedState owned;
    if (!stub->ListOwned(&ctx, req, &owned).ok()) continue;
    truncated |= owned.truncated();
    if (owned.objects_size() == 0) continue;
    uint64_t bytes = 0;
    std::map<std::string, int64_t> locations;
    for (const auto& o : owned.objects()) {
      bytes += o.size();
      ++locations[o.location()];
    }
    by_owner.push_back({{"owner", owned.owner_address()},
                        {"pid", owned.pid()},
                        {"objects", owned.objects_size()},
                        {"bytes", bytes},
                        {"by_location", locations}});
  }
  return {{"by_node", std::move(by_node)}, {"by_owner", std::move(by_owner)}, {"truncated", truncated}};
}

Json ClusterSource::placement_groups() {
  auto list = call_head<proto::Head::Stub, proto::Empty, proto::ListPlacementGroupsReply>(
      *head_, &proto::Head::Stub::ListPlacementGroups, proto::Empty(), "cannot list placement groups");
  static const char* kStrategy[] = {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"};
  static const char* kState[] = {"PENDING", "CREATED", "REMOVED", "RESCHEDULING"};
  Json out = Json::array();
  for (const auto& g : list.groups()) {
    Json bundles = Json::array();
    for (int i = 0; i < g.spec().bundles_size(); ++i)
      bundles.push_back({{"resources", resources_json(g.spec().bundles(i))},
                         {"node_id", i < g.bundle_node_ids_size() ? hex_id(g.bundle_node_ids(i)) : ""}});
    int strategy = static_cast<int>(g.spec().strategy()), state = static_cast<int>(g.state());
    out.push_back({{"id", hex_id(g.spec().group_id())},
                   {"name", g.spec().name()},
                   {"strategy", strategy >= 0 && strategy < 4 ? kStrategy[strategy] : "UNKNOWN"},
                   {"state", state >= 0 && state < 4 ? kState[state] : "UNKNOWN"},
                   {"job_id", hex_id(g.spec().job_id())},
                   {"created", unix_seconds_ms(g.create_time_ms())},
                   {"message", g.message()},
                   {"bundles", std::move(bundles)}});
  }
  return {{"placement_groups", std::move(out)}};
}

bool ClusterSource::takes_submissions() {
  grpc::ClientContext ctx;
  set_deadline(ctx, kHeadDeadline);
  proto::ListSubmissionsReply reply;
  return jobs_->ListSubmissions(&ctx, proto::Empty(), &reply).error_code() != grpc::StatusCode::UNIMPLEMENTED;
}

proto::ListSubmissionsReply ClusterSource::list_submissions() {
  grpc::ClientContext ctx;
  set_deadline(ctx, kHeadDeadline);
  proto::ListSubmissionsReply reply;
  grpc::Status s = jobs_->ListSubmissions(&ctx, proto::Empty(), &reply);
  // An embedded cluster's head takes no submissions: it simply has none.
  if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) return {};
  if (!s.ok()) throw ApiError{502, "cannot list submitted jobs: " + s.error_message()};
  return reply;
}

Json ClusterSource::jobs() {
  proto::ListSubmissionsReply subs = list_submissions();
  auto drivers = call_head<proto::Head::Stub, proto::Empty, proto::ListJobsReply>(*head_, &proto::Head::Stub::ListJobs,
                                                                                  proto::Empty(), "cannot list jobs");
  Json jobs = Json::array();
  for (const auto& s : subs.submissions()) jobs.push_back(submission_json(s));
  Json list = Json::array();
  for (const auto& d : drivers.jobs())
    list.push_back({{"job_id", hex_id(d.job_id())},
                    {"state", d.state() == proto::JobSpec::RUNNING ? "RUNNING" : "FINISHED"},
                    {"driver_address", d.driver_address()},
                    {"driver_pid", d.driver_pid()},
                    {"executable", d.executable()},
                    {"start_time", unix_seconds_ms(d.start_time_ms())},
                    {"end_time", d.end_time_ms() ? Json(unix_seconds_ms(d.end_time_ms())) : Json(nullptr)}});
  return {{"jobs", std::move(jobs)}, {"drivers", std::move(list)}};
}

Json ClusterSource::job(const std::string& id) {
  proto::ListSubmissionsReply subs = list_submissions();
  for (const auto& s : subs.submissions())
    if (s.id() == id) return submission_json(s);
  throw ApiError{404, "no submitted job '" + id + "'"};
}

Json ClusterSource::job_logs(const std::string& id, uint64_t offset) {
  proto::JobLogsRequest req;
  req.set_id(id);
  req.set_offset(offset);
  auto logs = call_head<proto::JobService::Stub, proto::JobLogsRequest, proto::JobLogs>(
      *jobs_, &proto::JobService::Stub::GetJobLogs, req, "cannot read the job's logs");
  return {{"text", logs.text()},
          {"next_offset", logs.next_offset()},
          {"ended", logs.ended()}};
}

Json ClusterSource::submit_job(const Json& body) {
  if (!takes_submissions())
    throw ApiError{501, "this cluster takes no job submissions (an embedded cluster); start one with "
                        "`gantry start --head` to submit jobs"};
  if (!body.is_object()) throw ApiError{400, "the body must be a JSON object with \"entrypoint\""};
  proto::SubmitJobRequest req;
  const Json& entry = body.contains("entrypoint") ? body["entrypoint"] : Json();
  if (entry.is_string()) {
    // Ray's REST API takes a command line: split it on white space.
    std::string word;
    for (char c : entry.get<std::string>() + " ") {
      if (c == ' ' || c == '\t') {
        if (!word.empty()) req.add_entrypoint(word);
        word.clear();
      } else {
        word += c;
      }
    }
  } else if (entry.is_array()) {
    for (const auto& a : entry) {
      if (!a.is_string()) throw ApiError{400, "\"entrypoint\" must be a string or an array of strings"};
      req.add_entrypoint(a.get<std::string>());
    }
  } else {
    throw ApiError{400, "\"entrypoint\" (a string or an array of strings) is required"};
  }
  if (req.entrypoint_size() == 0) throw ApiError{400, "\"entrypoint\" must not be empty"};
  if (body.contains("working_dir")) {
    if (!body["working_dir"].is_string()) throw ApiError{400, "\"working_dir\" must be a string"};
    req.set_working_dir(body["working_dir"].get<std::string>());
  }
  if (body.contains("env")) {
    if (!body["env"].is_object()) throw ApiError{400, "\"env\" must be an object of strings"};
    for (const auto& [k, v] : body["env"].items()) {
      if (!v.is_string()) throw ApiError{400, "\"env\"[\"" + k + "\"] must be a string"};
      (*req.mutable_environment())[k] = v.get<std::string>();
    }
  }
  auto sub = call_head<proto::JobService::Stub, proto::SubmitJobRequest, proto::Submission>(
      *jobs_, &proto::JobService::Stub::SubmitJob, req, "cannot submit the job");
  Json j = submission_json(sub);
  j["submission_id"] = sub.id();
  return j;
}

Json ClusterSource::stop_job(const std::string& id) {
  job(id);  // 404 for an unknown id
  proto::SubmissionRequest req;
  req.set_id(id);
  auto sub = call_head<proto::JobService::Stub, proto::SubmissionRequest, proto::Submission>(
      *jobs_, &proto::JobService::Stub::StopJob, req, "cannot stop the job");
  return submission_json(sub);
}

std::shared_ptr<proto::NodeAgent::Stub> ClusterSource::agent_of(const std::string& node_hex) {
  UniqueId id = parse_id(node_hex, "a node id");
  auto list = call_head<proto::Head::Stub, proto::Empty, proto::ListNodesReply>(*head_, &proto::Head::Stub::ListNodes,
                                                                                 proto::Empty(), "cannot list nodes");
  for (const auto& n : list.nodes()) {
    if (n.node_id() != id.binary()) continue;
    if (!n.alive()) throw ApiError{404, "node " + node_hex + " is dead"};
    return proto::NodeAgent::NewStub(channels_.get(n.agent_address()));
  }
  throw ApiError{404, "no node " + node_hex};
}

Json ClusterSource::log_files(const std::string& node) {
  auto agent = agent_of(node);
  grpc::ClientContext ctx;
  set_deadline(ctx, kPeerDeadline);
  proto::ListLogsReply reply;
  grpc::Status s = agent->ListLogs(&ctx, proto::Empty(), &reply);
  if (!s.ok()) throw ApiError{502, "node " + node + " did not list its logs: " + s.error_message()};
  Json files = Json::array();
  for (const auto& f : reply.files())
    files.push_back({{"name", f.name()}, {"size", f.size()}, {"modified", f.modified()}, {"pid", f.pid()}, {"kind", f.kind()}});
  return {{"node_id", node}, {"files", std::move(files)}};
}

Json ClusterSource::read_log(const std::string& node, const std::string& file, int64_t offset, int tail) {
  auto agent = agent_of(node);
  grpc::ClientContext ctx;
  set_deadline(ctx, kPeerDeadline);
  proto::ReadLogRequest req;
  req.set_name(file);
  req.set_offset(offset);
  req.set_tail_lines(tail);
  proto::ReadLogReply reply;
  grpc::Status s = agent->ReadLog(&ctx, req, &reply);
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) throw ApiError{404, s.error_message()};
  if (!s.ok()) throw ApiError{502, "node " + node + " did not answer: " + s.error_message()};
  // Logs may hold any bytes: the server writes invalid UTF-8 as U+FFFD.
  return {{"node_id", node},
          {"file", file},
          {"text", reply.text()},
          {"offset", reply.offset()},
          {"next_offset", reply.next_offset()},
          {"size", reply.size()}};
}

Json ClusterSource::stacks(const std::string& node, int pid) {
  auto agent = agent_of(node);
  grpc::ClientContext ctx;
  set_deadline(ctx, std::chrono::seconds(30));
  proto::StacksRequest req;
  req.set_pid(pid);
  proto::StacksReply reply;
  grpc::Status s = agent->GetStacks(&ctx, req, &reply);
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) throw ApiError{404, s.error_message()};
  if (!s.ok()) throw ApiError{502, s.error_message()};
  return {{"node_id", node}, {"pid", reply.pid()}, {"tool", reply.tool()}, {"text", reply.text()}};
}

std::vector<Json> ClusterSource::published(const std::string& kind) {
  std::string prefix = std::string(kPublishedPrefix) + kind + "/";
  proto::KvRequest req;
  req.set_cluster(true);
  req.set_key(prefix);
  auto keys = call_head<proto::Head::Stub, proto::KvRequest, proto::KvKeysReply>(*head_, &proto::Head::Stub::KvKeys,
                                                                                  req, "cannot list published records");
  std::vector<Json> out;
  for (const auto& key : keys.keys()) {
    proto::KvRequest get;
    get.set_cluster(true);
    get.set_key(key);
    auto value = call_head<proto::Head::Stub, proto::KvRequest, proto::KvReply>(*head_, &proto::Head::Stub::KvGet, get,
                                                                                "cannot read a published record");
    if (!value.found()) continue;
    Json record = Json::parse(value.value(), nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded() || !record.is_object()) continue;
    if (!record.contains("name")) record["name"] = key.substr(prefix.size());
    out.push_back(std::move(record));
  }
  return out;
}

Json ClusterSource::train_runs() {
  Json runs = Json::array();
  for (auto& r : published("train")) runs.push_back(summary_of(std::move(r)));
  return {{"runs", std::move(runs)}};
}

Json ClusterSource::train_run(const std::string& name) {
  for (auto& r : published("train"))
    if (r.value("name", "") == name) return r;
  throw ApiError{404, "no Train run '" + name + "'"};
}

Json ClusterSource::tune_experiments() {
  Json list = Json::array();
  for (auto& e : published("tune")) list.push_back(summary_of(std::move(e)));
  return {{"experiments", std::move(list)}};
}

Json ClusterSource::tune_experiment(const std::string& name) {
  for (auto& e : published("tune"))
    if (e.value("name", "") == name) return e;
  throw ApiError{404, "no Tune experiment '" + name + "'"};
}

Json ClusterSource::overview() {
  auto nodes = cached_nodes();
  Json total = Json::object(), used = Json::object();
  uint64_t store_used = 0, store_capacity = 0, store_objects = 0;
  int alive = 0, dead = 0;
  Json errors = Json::array();
  for (const auto& n : *nodes) {
    n.info.alive() ? ++alive : ++dead;
    if (!n.info.alive())
      errors.push_back({{"time", nullptr}, {"kind", "node"}, {"what", n.info.hostname()},
                        {"message", "node " + hex_id(n.info.node_id()) + " is dead"}, {"node_id", hex_id(n.info.node_id())}});
    if (!n.answered) continue;
    Json t = resources_json(n.stats.total()), a = resources_json(n.stats.available());
    for (const auto& [k, v] : t.items()) {
      total[k] = total.value(k, 0.0) + v.get<double>();
      used[k] = used.value(k, 0.0) + v.get<double>() - a.value(k, 0.0);
    }
    store_used += n.stats.store_used();
    store_capacity += n.stats.store_capacity();
    store_objects += n.stats.store_objects();
  }
  Json t = tasks();
  int64_t pending = 0, running = 0, finished = 0, failed = 0;
  for (const auto& f : t["functions"]) {
    pending += f["pending"].get<int64_t>();
    running += f["running"].get<int64_t>();
    finished += f["finished"].get<int64_t>();
    failed += f["failed"].get<int64_t>();
  }
  for (const auto& f : t["recent_failures"]) {
    if (errors.size() >= 20) break;
    errors.push_back({{"time", f["time"]}, {"kind", "task"}, {"what", f["name"]},
                      {"message", f["error_type"].get<std::string>() + ": " + f["message"].get<std::string>()},
                      {"node_id", f["node_id"]}});
  }
  Json actor_counts = {{"PENDING", 0}, {"ALIVE", 0}, {"RESTARTING", 0}, {"DEAD", 0}};
  auto actor_list = list_actors();
  for (const auto& a : actor_list->actors()) {
    std::string s = actor_state_name(a.state());
    actor_counts[s] = actor_counts.value(s, 0) + 1;
    if (a.state() == proto::ActorInfo::DEAD && a.has_death_cause() && errors.size() < 40)
      errors.push_back({{"time", nullptr}, {"kind", "actor"}, {"what", a.class_name()},
                        {"message", a.death_cause().message()}, {"node_id", a.node_id()}});
  }
  Json j = jobs();
  int running_jobs = 0, ended_jobs = 0;
  for (const auto& d : j["drivers"]) d["state"] == "RUNNING" ? ++running_jobs : ++ended_jobs;
  for (const auto& s : j["jobs"]) {
    s["status"] == "RUNNING" ? ++running_jobs : ++ended_jobs;
    if (s["status"] == "FAILED" && errors.size() < 60)
      errors.push_back({{"time", s["end_time"]}, {"kind", "job"}, {"what", s["job_id"]}, {"message", s["message"]},
                        {"node_id", ""}});
  }
  return {{"head_address", head_address_},
          {"version", "0.1.0"},
          {"time", now_seconds()},
          {"nodes", {{"alive", alive}, {"dead", dead}}},
          {"resources", {{"total", total}, {"used", used}}},
          {"object_store", {{"used_bytes", store_used}, {"capacity_bytes", store_capacity}, {"objects", store_objects}}},
          {"tasks", {{"pending", pending}, {"running", running}, {"finished", finished}, {"failed", failed}}},
          {"actors", actor_counts},
          {"jobs", {{"running", running_jobs}, {"finished", ended_jobs}}},
          {"recent_errors", std::move(errors)}};
}

Json ClusterSource::timeline() {
  // Not cached: a timeline wants every execution the workers still keep.
  TaskGather g = gather_tasks(1 << 20, /*ended=*/true);
  Json events = Json::array();
  std::map<std::string, int> node_pids;  // node -> Chrome "process" id
  for (const auto& w : g.executed) {
    std::string node = w.node_id.empty() ? "driver" : w.node_id.substr(0, 8);
    auto [it, fresh] = node_pids.try_emplace(w.node_id, static_cast<int>(node_pids.size()) + 1);
    int pid = it->second;
    if (fresh)
      events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", "node " + node}}}});
    int tid = w.events.pid();
    std::string thread = "worker " + std::to_string(tid);
    if (!w.events.actor_class().empty()) thread += " (" + w.events.actor_class() + ")";
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"name", thread}}}});
    uint64_t now = static_cast<uint64_t>(now_seconds() * 1e6);
    for (const auto& x : w.events.executions()) {
      uint64_t end = x.end_us() ? x.end_us() : now;
      events.push_back({{"name", x.name()},
                        {"cat", x.failed() ? "task,failed" : "task"},
                        {"ph", "X"},
                        {"ts", x.start_us()},
                        {"dur", end >= x.start_us() ? end - x.start_us() : 0},
                        {"pid", pid},
                        {"tid", tid},
                        {"args", {{"task_id", hex_id(x.task_id())},
                                  {"attempt", x.attempt()},
                                  {"state", x.end_us() ? (x.failed() ? "FAILED" : "FINISHED") : "RUNNING"}}}});
    }
  }
  return {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};
}

std::string ClusterSource::metrics() {
  PrometheusText m;
  using L = PrometheusText::Labels;
  auto nodes = cached_nodes();
  int alive = 0, dead = 0;
  for (const auto& n : *nodes) n.info.alive() ? ++alive : ++dead;
  m.gauge("gantry_nodes", "Nodes of the cluster by state.", {{"state", "alive"}}, alive);
  m.gauge("gantry_nodes", "", {{"state", "dead"}}, dead);
  for (const auto& n : *nodes)
    if (n.answered) add_node_metrics(m, n.stats);
  Json t = tasks();
  for (const auto& f : t["functions"]) {
    std::string fn = f["name"];
    m.gauge("gantry_tasks", "Tasks and actor calls now, by function and state (pending: waiting for arguments, "
                            "a worker or their actor; running: executing).",
            L{{"function", fn}, {"state", "pending"}}, f["pending"].get<double>());
    m.gauge("gantry_tasks", "", L{{"function", fn}, {"state", "running"}}, f["running"].get<double>());
  }
  for (const auto& f : t["functions"])
    m.counter("gantry_tasks_finished_total", "Tasks and actor calls that returned a value, by function.",
              {{"function", f["name"].get<std::string>()}}, f["finished"].get<double>());
  for (const auto& f : t["functions"])
    m.counter("gantry_tasks_failed_total", "Tasks and actor calls that ended in an error, by function.",
              {{"function", f["name"].get<std::string>()}}, f["failed"].get<double>());
  std::map<std::pair<std::string, std::string>, int> actors;
  auto actor_list = list_actors();
  for (const auto& a : actor_list->actors()) ++actors[{a.class_name(), actor_state_name(a.state())}];
  for (const auto& [key, n] : actors)
    m.gauge("gantry_actors", "Actors by class and state.", L{{"class", key.first}, {"state", key.second}}, n);
  Json j = jobs();
  std::map<std::string, int> job_states;
  for (const auto& d : j["drivers"]) ++job_states[d["state"].get<std::string>()];
  for (const auto& [state, n] : job_states) m.gauge("gantry_jobs", "Drivers' jobs by state.", {{"state", state}}, n);
  std::map<std::string, int> sub_states;
  for (const auto& s : j["jobs"]) ++sub_states[s["status"].get<std::string>()];
  for (const auto& [state, n] : sub_states)
    m.gauge("gantry_job_submissions", "Jobs submitted with `gantry job submit` by status.", {{"status", state}}, n);
  std::map<std::string, int> groups;
  Json group_list = placement_groups();
  for (const auto& g : group_list["placement_groups"]) ++groups[g["state"].get<std::string>()];
  for (const auto& [state, n] : groups)
    m.gauge("gantry_placement_groups", "Placement groups by state.", {{"state", state}}, n);
  for (const auto& r : published("train")) {
    std::string run = r.value("name", "");
    m.gauge("gantry_train_info", "A Train run (value 1) with its state.", L{{"run", run}, {"state", r.value("state", "")}}, 1);
    m.gauge("gantry_train_steps", "Reports (training steps) a Train run has made.", {{"run", run}},
            r.value("iterations", 0.0));
    if (r.contains("num_workers") && r["num_workers"].is_number())
      m.gauge("gantry_train_workers", "Workers of a Train run.", {{"run", run}}, r["num_workers"].get<double>());
    if (r.contains("samples_per_second") && r["samples_per_second"].is_number())
      m.gauge("gantry_train_samples_per_second", "A Train run's last reported throughput.", {{"run", run}},
              r["samples_per_second"].get<double>());
    if (r.contains("last_metrics") && r["last_metrics"].contains("loss") && r["last_metrics"]["loss"].is_number())
      m.gauge("gantry_train_loss", "A Train run's last reported loss.", {{"run", run}},
              r["last_metrics"]["loss"].get<double>());
  }
  for (const auto& e : published("tune")) {
    std::string exp = e.value("name", "");
    if (e.contains("counts") && e["counts"].is_object())
      for (const auto& [status, n] : e["counts"].items())
        if (n.is_number())
          m.gauge("gantry_tune_trials", "Trials of a Tune experiment by status.", L{{"experiment", exp}, {"status", status}},
                  n.get<double>());
    if (e.contains("best") && e["best"].is_object() && e["best"].contains("value") && e["best"]["value"].is_number())
      m.gauge("gantry_tune_best_metric", "The best value of a Tune experiment's metric so far.",
              L{{"experiment", exp}, {"metric", e.value("metric", "")}, {"mode", e.value("mode", "")}},
              e["best"]["value"].get<double>());
  }
  return m.str();
}

}  // namespace gantry::internal
