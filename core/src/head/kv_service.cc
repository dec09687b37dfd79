// The head's key-value store service: KvPut, KvGet, KvWait, KvDel, KvAdd, KvKeys.
#include <stdexcept>

#include "common/logging.h"
#include "head/head_service.h"
#include "rpc/auth.h"

namespace gantry::internal {
namespace {

// The namespace a request names, or an error status: a job's keys are under its 16-byte
// id, the cluster's under "".
grpc::Status kv_namespace(const proto::KvRequest& req, bool key_required, std::string* ns) {
  if (req.cluster()) {
    ns->clear();
  } else if (req.job_id().size() == 16) {
    *ns = req.job_id();
  } else {
    return {grpc::StatusCode::INVALID_ARGUMENT, "a job-scoped key needs the caller's 16-byte job id"};
  }
  if (key_required && req.key().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "a key must not be empty"};
  if (req.key().size() > KvTable::kMaxKeyBytes)
    return {grpc::StatusCode::INVALID_ARGUMENT, "a key is at most " + std::to_string(KvTable::kMaxKeyBytes) +
                                                    " bytes, not " + std::to_string(req.key().size())};
  return grpc::Status::OK;
}

}  // namespace

grpc::Status HeadService::KvPut(grpc::ServerContext* ctx, const proto::KvRequest* req, proto::KvReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::string ns;
  if (grpc::Status s = kv_namespace(*req, true, &ns); !s.ok()) return s;
  if (req->value().size() > KvTable::kMaxValueBytes)
    return {grpc::StatusCode::INVALID_ARGUMENT, "a value is at most 64 MiB, not " + std::to_string(req->value().size()) +
                                                    " bytes (key '" + req->key() + "')"};
  std::vector<KvTable::Fired> fired;
  {
    std::lock_guard<std::mutex> lock(kv_mu_);
    reply->set_written(kv_.put(ns, req->key(), req->value(), !req->no_overwrite(), fired));
  }
  run_fired(fired);
  return grpc::Status::OK;
}

grpc::Status HeadService::KvGet(grpc::ServerContext* ctx, const proto::KvRequest* req, proto::KvReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::string ns;
  if (grpc::Status s = kv_namespace(*req, true, &ns); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(kv_mu_);
  if (auto value = kv_.get(ns, req->key())) {
    reply->set_found(true);
    reply->set_value(std::move(*value));
  }
  return grpc::Status::OK;
}

namespace {

// One waiting KvWait call. It is registered in the table until the key is written, the
// call is cancelled (its deadline passed, the caller went away) or the head stops;
// whichever removes it from the table (under kv_mu_) finishes the call.
class KvWaitReactor final : public grpc::ServerUnaryReactor {
 public:
  KvWaitReactor(std::mutex* mu, KvTable* table) : mu_(mu), table_(table) {}
  void set_waiter(uint64_t id) { waiter_ = id; }
  void OnCancel() override {
    bool mine;
    {
      std::lock_guard<std::mutex> lock(*mu_);
      mine = waiter_ != 0 && table_->remove_waiter(waiter_);
    }
    if (mine) Finish({grpc::StatusCode::DEADLINE_EXCEEDED, "the key was not set before the wait ended"});
  }
  void OnDone() override { delete this; }

 private:
  std::mutex* mu_;
  KvTable* table_;
  uint64_t waiter_ = 0;  // guarded by *mu_
};

}  // namespace

grpc::ServerUnaryReactor* HeadService::KvWait(grpc::CallbackServerContext* ctx, const proto::KvRequest* req,
                                              proto::KvReply* reply) {
  auto* reactor = new KvWaitReactor(&kv_mu_, &kv_);
  if (grpc::Status s = check_token(*ctx, "KvWait"); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  std::string ns;
  if (grpc::Status s = kv_namespace(*req, true, &ns); !s.ok()) {
    reactor->Finish(s);
    return reactor;
  }
  std::unique_lock<std::mutex> lock(kv_mu_);
  if (kv_stopping_) {
    lock.unlock();
    reactor->Finish({grpc::StatusCode::UNAVAILABLE, "the head is stopping"});
    return reactor;
  }
  if (auto value = kv_.get(ns, req->key())) {
    lock.unlock();
    reply->set_found(true);
    reply->set_value(std::move(*value));
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  uint64_t id = kv_.add_waiter(ns, req->key(), [reactor, reply](const std::string* value, const std::string& reason) {
    if (value == nullptr) {
      reactor->Finish({grpc::StatusCode::ABORTED, reason});
      return;
    }
    reply->set_found(true);
    reply->set_value(*value);
    reactor->Finish(grpc::Status::OK);
  });
  reactor->set_waiter(id);
  return reactor;
}

grpc::Status HeadService::KvDel(grpc::ServerContext* ctx, const proto::KvRequest* req, proto::KvReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::string ns;
  if (grpc::Status s = kv_namespace(*req, true, &ns); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(kv_mu_);
  reply->set_found(kv_.del(ns, req->key()));
  return grpc::Status::OK;
}

grpc::Status HeadService::KvAdd(grpc::ServerContext* ctx, const proto::KvRequest* req, proto::KvReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::string ns;
  if (grpc::Status s = kv_namespace(*req, true, &ns); !s.ok()) return s;
  std::vector<KvTable::Fired> fired;
  try {
    std::lock_guard<std::mutex> lock(kv_mu_);
    reply->set_number(kv_.add(ns, req->key(), req->delta(), fired));
  } catch (const std::invalid_argument& e) {
    return {grpc::StatusCode::FAILED_PRECONDITION, e.what()};
  } catch (const std::overflow_error& e) {
    return {grpc::StatusCode::OUT_OF_RANGE, e.what()};
  }
  run_fired(fired);
  return grpc::Status::OK;
}

grpc::Status HeadService::KvKeys(grpc::ServerContext* ctx, const proto::KvRequest* req, proto::KvKeysReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  std::string ns;
  if (grpc::Status s = kv_namespace(*req, false, &ns); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(kv_mu_);
  for (std::string& key : kv_.keys(ns, req->key())) reply->add_keys(std::move(key));
  return grpc::Status::OK;
}

void HeadService::drop_job_keys(const std::string& job_id) {
  std::vector<KvTable::Fired> fired;
  {
    std::lock_guard<std::mutex> lock(kv_mu_);
    kv_.drop_namespace(job_id, "the job " + UniqueId::from_binary(job_id).hex() + " finished, and its keys with it",
                       fired);
  }
  run_fired(fired);
}

void HeadService::stop_kv_waits() {
  std::vector<KvTable::Fired> fired;
  {
    std::lock_guard<std::mutex> lock(kv_mu_);
    kv_stopping_ = true;
    kv_.fail_all_waiters("the head is stopping", fired);
  }
  run_fired(fired);
}

}  // namespace gantry::internal
