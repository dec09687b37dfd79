// CoreWorker's calls to the head's key-value store (gantry/kv.h) and resource totals.
#include "gantry/errors.h"
#include "gantry/kv.h"
#include "runtime/core_worker.h"
#include "runtime/task_executor.h"

namespace gantry::internal {
namespace {

constexpr auto kKvDeadline = std::chrono::seconds(60);

void check_key(const char* op, const std::string& key) {
  if (key.empty()) throw Error(std::string("gantry::kv::") + op + ": a key must not be empty");
  if (key.size() > 4096)
    throw Error(std::string("gantry::kv::") + op + ": a key is at most 4096 bytes, not " + std::to_string(key.size()));
}

[[noreturn]] void throw_kv(const char* op, const std::string& key, const grpc::Status& s) {
  throw Error(std::string("gantry::kv::") + op + "('" + key + "'): the head answered " +
              std::to_string(static_cast<int>(s.error_code())) + ": " + s.error_message());
}

}  // namespace

proto::KvRequest CoreWorker::kv_request(const std::string& key, bool cluster) const {
  proto::KvRequest req;
  req.set_key(key);
  if (cluster) req.set_cluster(true);
  else req.set_job_id(config_.job_id.binary());
  return req;
}

bool CoreWorker::kv_put(const std::string& key, std::string_view value, bool overwrite, bool cluster) {
  check_key("put", key);
  if (value.size() > kv::kMaxValueBytes)
    throw Error("gantry::kv::put('" + key + "'): a value is at most 64 MiB, not " + std::to_string(value.size()) +
                " bytes; put large data in the object store (gantry::put) and store its reference");
  proto::KvRequest req = kv_request(key, cluster);
  req.set_value(std::string(value));
  req.set_no_overwrite(!overwrite);
  proto::KvReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kKvDeadline);
  grpc::Status s = head_->KvPut(&ctx, req, &reply);
  if (!s.ok()) throw_kv("put", key, s);
  return reply.written();
}

std::optional<std::string> CoreWorker::kv_get(const std::string& key, bool cluster) {
  check_key("get", key);
  proto::KvReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kKvDeadline);
  grpc::Status s = head_->KvGet(&ctx, kv_request(key, cluster), &reply);
  if (!s.ok()) throw_kv("get", key, s);
  if (!reply.found()) return std::nullopt;
  return std::move(*reply.mutable_value());
}

std::optional<std::string> CoreWorker::kv_wait(const std::string& key, std::chrono::milliseconds timeout,
                                               bool cluster) {
  check_key("wait", key);
  proto::KvReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::max(timeout, std::chrono::milliseconds(0)));
  // A task waiting on a key (a rendezvous) lends its CPUs; other threads of the process
  // (a communicator's monitor, say) do not count.
  std::optional<BlockedScope> blocked;
  if (current_task() != nullptr) blocked.emplace(*this);
  grpc::Status s = head_->KvWait(&ctx, kv_request(key, cluster), &reply);
  // A deadline shorter than the round trip ends the call before the head could answer for
  // a key that exists: a short wait must not miss it, so look once more.
  if (s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) return kv_get(key, cluster);
  if (s.error_code() == grpc::StatusCode::ABORTED) return std::nullopt;
  if (!s.ok()) throw_kv("wait", key, s);
  if (!reply.found()) return std::nullopt;
  return std::move(*reply.mutable_value());
}

bool CoreWorker::kv_del(const std::string& key, bool cluster) {
  check_key("del", key);
  proto::KvReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kKvDeadline);
  grpc::Status s = head_->KvDel(&ctx, kv_request(key, cluster), &reply);
  if (!s.ok()) throw_kv("del", key, s);
  return reply.found();
}

int64_t CoreWorker::kv_add(const std::string& key, int64_t delta, bool cluster) {
  check_key("add", key);
  proto::KvRequest req = kv_request(key, cluster);
  req.set_delta(delta);
  proto::KvReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kKvDeadline);
  grpc::Status s = head_->KvAdd(&ctx, req, &reply);
  if (!s.ok()) throw_kv("add", key, s);
  return reply.number();
}

std::vector<std::string> CoreWorker::kv_keys(const std::string& prefix, bool cluster) {
  proto::KvKeysReply reply;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kKvDeadline);
  grpc::Status s = head_->KvKeys(&ctx, kv_request(prefix, cluster), &reply);
  if (!s.ok()) throw_kv("keys", prefix, s);
  return {reply.keys().begin(), reply.keys().end()};
}

std::map<std::string, double> CoreWorker::cluster_resources(bool available) {
  proto::Empty req;
  proto::ClusterView view;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status s = head_->GetClusterView(&ctx, req, &view);
  if (!s.ok()) throw Error("cannot read the cluster's resources: the head answered " + s.error_message());
  ResourceSet sum;
  for (const auto& node : view.nodes()) {
    if (!node.alive()) continue;
    if (!available) {
      sum += from_proto(node.total());
      continue;
    }
    // Ask the node itself: the head's copy is as old as its last health check.
    proto::NodeStats stats;
    grpc::ClientContext node_ctx;
    node_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto agent = proto::NodeAgent::NewStub(channels_.get(node.agent_address()));
    if (agent->GetNodeStats(&node_ctx, req, &stats).ok()) sum += from_proto(stats.available());
    else sum += from_proto(node.available());
  }
  return sum.to_doubles();
}

}  // namespace gantry::internal

namespace gantry::kv {

bool put(const std::string& key, std::string_view value, PutOptions options) {
  return detail::runtime().kv_put(key, value, options.overwrite, options.cluster);
}
std::optional<std::string> get(const std::string& key, Scope scope) { return detail::runtime().kv_get(key, scope.cluster); }
std::optional<std::string> wait(const std::string& key, std::chrono::milliseconds timeout, Scope scope) {
  return detail::runtime().kv_wait(key, timeout, scope.cluster);
}
bool del(const std::string& key, Scope scope) { return detail::runtime().kv_del(key, scope.cluster); }
int64_t add(const std::string& key, int64_t delta, Scope scope) { return detail::runtime().kv_add(key, delta, scope.cluster); }
std::vector<std::string> keys(const std::string& prefix, Scope scope) {
  return detail::runtime().kv_keys(prefix, scope.cluster);
}

}  // namespace gantry::kv
