#include "agent/object_transfer.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/crc32c.h"
#include "common/logging.h"
#include "gantry/errors.h"
#include "object_store/shm_object.h"
#include "rpc/auth.h"

namespace gantry::internal {

ObjectTransfer::ObjectTransfer(ObjectStore& store, ClusterView& view, ChannelCache& channels, UniqueId self)
    : store_(store), view_(view), channels_(channels), self_(self) {}

proto::PullObjectReply ObjectTransfer::pull(const proto::ShmLocation& location) {
  proto::PullObjectReply reply;
  ObjectId id = ObjectId::from_binary(location.object_id());
  if (id.is_nil()) {
    *reply.mutable_error() = make_error(proto::ErrorInfo::INTERNAL, "cannot pull an object without its 16-byte id");
    return reply;
  }
  if (std::string path = store_.find(id); !path.empty()) {
    reply.set_path(path);
    return reply;
  }
  std::shared_ptr<InFlight> flight;
  bool leader = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = in_flight_[id];
    if (!slot) {
      slot = std::make_shared<InFlight>();
      leader = true;
    }
    flight = slot;
  }
  if (!leader) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return flight->done; });
    return flight->reply;
  }
  proto::PullObjectReply result = transfer(location);
  {
    std::lock_guard<std::mutex> lock(mu_);
    flight->reply = result;
    flight->done = true;
    in_flight_.erase(id);
  }
  cv_.notify_all();
  return result;
}

proto::PullObjectReply ObjectTransfer::transfer(const proto::ShmLocation& location) {
  proto::PullObjectReply reply;
  ObjectId id = ObjectId::from_binary(location.object_id());
  UniqueId node_id = UniqueId::from_hex(location.node_id());
  std::string what = "object " + id.hex();
  auto lost = [&](const std::string& why) {
    *reply.mutable_error() = make_error(proto::ErrorInfo::OBJECT_LOST, what + " is lost: " + why);
    return reply;
  };
  std::optional<ClusterView::Node> node = view_.find(node_id);
  if (!node) return lost("its only copy was on node " + location.node_id() + ", which is not in the cluster");
  std::string where = "node " + node_id.short_hex() + " (" + node->agent_address + ")";
  if (!node->alive) return lost("its only copy was on " + where + ", which is dead");

  ObjectStore::Reservation r = store_.reserve(id, location.size(), /*secondary=*/true);
  if (!r.error.empty()) {
    *reply.mutable_error() = make_error(proto::ErrorInfo::OBJECT_STORE_FULL,
                                        "cannot copy " + what + " from " + where + " here: " + r.error);
    return reply;
  }
  std::string failure;
  bool gone = false;
  auto start = std::chrono::steady_clock::now();
  try {
    std::unique_ptr<MappedFile> file = MappedFile::create(r.path, location.size(), r.reused);
    auto stub = proto::NodeAgent::NewStub(channels_.get(node->agent_address));
    proto::ReadObjectRequest req;
    req.set_id(id.binary());
    req.set_size(location.size());
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<proto::ObjectChunk>> reader = stub->ReadObject(&ctx, req);
    proto::ObjectChunk chunk;
    uint64_t received = 0;
    while (failure.empty() && reader->Read(&chunk)) {
      const std::string& data = chunk.data();
      if (chunk.offset() != received || data.size() > location.size() - received) {
        failure = "chunk at offset " + std::to_string(chunk.offset()) + " does not continue the " +
                  std::to_string(received) + " bytes received";
      } else if (crc32c(data.data(), data.size()) != chunk.crc32()) {
        failure = "chunk at offset " + std::to_string(chunk.offset()) + " failed its checksum";
      } else {
        std::memcpy(file->data() + received, data.data(), data.size());
        received += data.size();
      }
    }
    if (!failure.empty()) ctx.TryCancel();
    grpc::Status s = reader->Finish();
    if (failure.empty() && !s.ok()) {
      gone = s.error_code() == grpc::StatusCode::NOT_FOUND || s.error_code() == grpc::StatusCode::UNAVAILABLE;
      failure = s.error_message();
    }
    if (failure.empty() && received != location.size())
      failure = "the transfer ended after " + std::to_string(received) + " of " + std::to_string(location.size()) +
                " bytes";
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (!failure.empty()) {
    store_.remove(id);
    if (gone) {
      std::optional<ClusterView::Node> now = view_.find(node_id);
      return lost("its only copy was on " + where + ", which " +
                  (now && !now->alive ? "is dead" : "cannot give it (" + failure + ")"));
    }
    *reply.mutable_error() =
        make_error(proto::ErrorInfo::INTERNAL, "cannot copy " + what + " from " + where + ": " + failure);
    return reply;
  }
  store_.seal_secondary(id);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  GANTRY_LOG_INFO("pulled {} ({:.1f} MiB) from {} in {:.0f} ms ({:.2f} GB/s)", what, location.size() / 1048576.0,
                  where, seconds * 1000, location.size() / 1e9 / std::max(seconds, 1e-9));
  reply.set_path(r.path);
  return reply;
}

grpc::Status ObjectTransfer::serve_read(grpc::ServerContext* ctx, const proto::ReadObjectRequest& req,
                                        grpc::ServerWriter<proto::ObjectChunk>* writer) {
  ObjectId id = ObjectId::from_binary(req.id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "object id must be 16 bytes"};
  std::string path = store_.find(id);
  if (path.empty())
    return {grpc::StatusCode::NOT_FOUND, "node " + self_.short_hex() + " does not hold object " + id.hex()};
  std::unique_ptr<MappedFile> file;
  try {
    file = MappedFile::open_read_only(path);
  } catch (const std::exception& e) {
    return {grpc::StatusCode::NOT_FOUND, e.what()};
  }
  if (file->size() != req.size())
    return {grpc::StatusCode::FAILED_PRECONDITION, "object " + id.hex() + " has " + std::to_string(file->size()) +
                                                       " bytes here, not the " + std::to_string(req.size()) +
                                                       " the reader expects"};
  proto::ObjectChunk chunk;
  for (size_t offset = 0; offset < file->size(); offset += kChunkBytes) {
    if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
    size_t n = std::min(kChunkBytes, file->size() - offset);
    chunk.set_offset(offset);
    chunk.set_data(file->data() + offset, n);
    chunk.set_crc32(crc32c(file->data() + offset, n));
    if (!writer->Write(chunk)) return {grpc::StatusCode::CANCELLED, "the reader went away"};
  }
  return grpc::Status::OK;
}

}  // namespace gantry::internal
