#include "agent/object_transfer.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
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
    // The object port when the node has one and TLS is off; else (or when the port
    // cannot be reached) a gRPC stream.
    bool framed = !node->object_address.empty() && !tls_enabled() &&
                  read_framed(node->object_address, id, location.size(), *file, &failure, &gone);
    if (!framed) read_grpc(node->agent_address, id, location.size(), *file, &failure, &gone);
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

void ObjectTransfer::read_grpc(const std::string& agent_address, const ObjectId& id, uint64_t size, MappedFile& file,
                               std::string* failure, bool* gone) {
  auto stub = proto::NodeAgent::NewStub(channels_.get(agent_address));
  proto::ReadObjectRequest req;
  req.set_id(id.binary());
  req.set_size(size);
  req.set_reader_node_id(self_.binary());
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<proto::ObjectChunk>> reader = stub->ReadObject(&ctx, req);
  proto::ObjectChunk chunk;
  uint64_t received = 0;
  while (failure->empty() && reader->Read(&chunk)) {
    const std::string& data = chunk.data();
    if (chunk.offset() != received || data.size() > size - received) {
      *failure = "chunk at offset " + std::to_string(chunk.offset()) + " does not continue the " +
                 std::to_string(received) + " bytes received";
    } else if (crc32c(data.data(), data.size()) != chunk.crc32()) {
      *failure = "chunk at offset " + std::to_string(chunk.offset()) + " failed its checksum";
    } else {
      std::memcpy(file.data() + received, data.data(), data.size());
      received += data.size();
    }
  }
  if (!failure->empty()) ctx.TryCancel();
  grpc::Status s = reader->Finish();
  if (failure->empty() && !s.ok()) {
    *gone = s.error_code() == grpc::StatusCode::NOT_FOUND || s.error_code() == grpc::StatusCode::UNAVAILABLE;
    *failure = s.error_message();
  }
  if (failure->empty() && received != size)
    *failure = "the transfer ended after " + std::to_string(received) + " of " + std::to_string(size) + " bytes";
}

grpc::Status ObjectTransfer::serve_read(grpc::ServerContext* ctx, const proto::ReadObjectRequest& req,
                                        grpc::ServerWriter<proto::ObjectChunk>* writer) {
  ObjectId id = ObjectId::from_binary(req.id());
  if (id.is_nil()) return {grpc::StatusCode::INVALID_ARGUMENT, "object id must be 16 bytes"};
  std::string path = store_.find(id);
  if (path.empty())
    return {grpc::StatusCode::NOT_FOUND, "node " + self_.short_hex() + " does not hold object " + id.hex()};
  note_copy(id, UniqueId::from_binary(req.reader_node_id()));
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

namespace {

// Records on the object port: a 16-byte header {offset u64, length u32, crc u32}, little
// endian, then `length` bytes. An offset of all ones marks an error record whose bytes are
// the message; its crc field is 1 when the node does not hold the object.
constexpr uint64_t kErrorRecord = ~uint64_t{0};
constexpr size_t kRecordBytes = 1 << 20;   // small enough to checksum while still in cache
constexpr int kSocketBuffer = 4 << 20;
constexpr uint32_t kMaxErrorText = 64 << 10;

void put_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
void put_u32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint32_t get_u32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool recv_all(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool send_record(int fd, uint64_t offset, const char* data, uint32_t length, uint32_t crc) {
  char header[16];
  put_u64(header, offset);
  put_u32(header + 8, length);
  put_u32(header + 12, crc);
  return send_all(fd, header, sizeof header) && send_all(fd, data, length);
}

void send_error(int fd, const std::string& message, bool not_here) {
  send_record(fd, kErrorRecord, message.data(), static_cast<uint32_t>(std::min<size_t>(message.size(), kMaxErrorText)),
              not_here ? 1 : 0);
}

}  // namespace

void ObjectTransfer::serve_socket(FrameSocket& socket) {
  std::string token, request;
  socket.set_read_timeout(std::chrono::seconds(10));
  if (!socket.read(&token, /*max_frame=*/4096) || !token_matches(token)) {
    GANTRY_LOG_WARN("refused a reader on the object port: {}", token.empty() ? "no cluster token" : "wrong cluster token");
    return;
  }
  // (object id, size, reader's node id): 16 + 8 + 16 bytes.
  if (!socket.read(&request, /*max_frame=*/64) || request.size() != 40) return;
  int fd = socket.fd();
  ObjectId id = ObjectId::from_binary(request.substr(0, 16));
  uint64_t size = get_u64(request.data() + 16);
  std::string path = id.is_nil() ? std::string() : store_.find(id);
  if (path.empty()) return send_error(fd, "node " + self_.short_hex() + " does not hold object " + id.hex(), true);
  note_copy(id, UniqueId::from_binary(request.substr(24, 16)));
  std::unique_ptr<MappedFile> file;
  try {
    file = MappedFile::open_read_only(path);
  } catch (const std::exception& e) {
    return send_error(fd, e.what(), true);
  }
  if (file->size() != size)
    return send_error(fd, "object " + id.hex() + " has " + std::to_string(file->size()) + " bytes here, not the " +
                              std::to_string(size) + " the reader expects", false);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kSocketBuffer, sizeof kSocketBuffer);
  for (size_t offset = 0; offset < file->size(); offset += kRecordBytes) {
    size_t n = std::min(kRecordBytes, file->size() - offset);
    const char* data = reinterpret_cast<const char*>(file->data()) + offset;
    if (!send_record(fd, offset, data, static_cast<uint32_t>(n), crc32c(data, n))) return;  // the reader left
  }
}

void ObjectTransfer::note_copy(const ObjectId& id, const UniqueId& reader) {
  if (reader.is_nil() || reader == self_) return;
  std::lock_guard<std::mutex> lock(copies_mu_);
  copies_[id].insert(reader);
}

std::unordered_map<UniqueId, std::vector<ObjectId>> ObjectTransfer::take_copies(const std::vector<ObjectId>& ids) {
  std::unordered_map<UniqueId, std::vector<ObjectId>> out;
  std::lock_guard<std::mutex> lock(copies_mu_);
  for (const ObjectId& id : ids) {
    auto it = copies_.find(id);
    if (it == copies_.end()) continue;
    for (const UniqueId& reader : it->second) out[reader].push_back(id);
    copies_.erase(it);
  }
  return out;
}

bool ObjectTransfer::read_framed(const std::string& endpoint, const ObjectId& id, uint64_t size, MappedFile& file,
                                 std::string* failure, bool* gone) {
  std::string error;
  std::unique_ptr<FrameSocket> socket = FrameSocket::connect(endpoint, &error);
  std::string request = id.binary();
  request.resize(24);
  put_u64(request.data() + 16, size);
  request += self_.binary();
  if (!socket || !socket->write(cluster_token()) || !socket->write(request)) return false;
  int fd = socket->fd();
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kSocketBuffer, sizeof kSocketBuffer);
  timeval timeout{30, 0};  // a holder that stops sending mid-object
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  char* out = reinterpret_cast<char*>(file.data());
  uint64_t received = 0;
  char header[16];
  while (received < size) {
    if (!recv_all(fd, header, sizeof header)) {
      *failure = "the object port closed after " + std::to_string(received) + " of " + std::to_string(size) + " bytes";
      *gone = true;
      return true;
    }
    uint64_t offset = get_u64(header);
    uint32_t length = get_u32(header + 8), crc = get_u32(header + 12);
    if (offset == kErrorRecord) {
      std::string message(std::min(length, kMaxErrorText), '\0');
      *failure = recv_all(fd, message.data(), message.size()) ? message : "the holder sent a broken error";
      *gone = crc == 1;
      return true;
    }
    if (offset != received || length == 0 || length > size - received || length > 16 * kRecordBytes) {
      *failure = "record at offset " + std::to_string(offset) + " does not continue the " + std::to_string(received) +
                 " bytes received";
      return true;
    }
    if (!recv_all(fd, out + received, length)) {
      *failure = "the object port closed inside the record at offset " + std::to_string(offset);
      *gone = true;
      return true;
    }
    if (crc32c(out + received, length) != crc) {
      *failure = "record at offset " + std::to_string(offset) + " failed its checksum";
      return true;
    }
    received += length;
  }
  return true;
}

}  // namespace gantry::internal
