#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "agent/cluster_view.h"
#include "gantry/agent.grpc.pb.h"
#include "gantry/ids.h"
#include "object_store/object_store.h"
#include "object_store/shm_object.h"
#include "rpc/frame_socket.h"
#include "rpc/grpc_util.h"

namespace gantry::internal {

/// Moves large objects between nodes. `pull` copies an object of another node's store
/// into this node's, as a secondary copy its readers then map; the other node's agent
/// serves the bytes (`serve_read`) in chunks, each with a CRC-32C the reader checks. The
/// bytes go from the sender's mapping straight into the receiver's file, so neither side
/// holds more than one chunk beyond the object itself. Thread-safe; concurrent pulls of
/// one object share one transfer.
class ObjectTransfer {
 public:
  static constexpr size_t kChunkBytes = 4 << 20;

  ObjectTransfer(ObjectStore& store, ClusterView& view, ChannelCache& channels, UniqueId self);

  /// Makes the object at `location` (another node's) present here. On success the reply
  /// names the local file; else its error is OBJECT_LOST (the holding node is dead or no
  /// longer has it) or another kind, naming the object and the node.
  proto::PullObjectReply pull(const proto::ShmLocation& location);
  /// Streams object `req.id()` of this node's store.
  grpc::Status serve_read(grpc::ServerContext* ctx, const proto::ReadObjectRequest& req,
                          grpc::ServerWriter<proto::ObjectChunk>* writer);
  /// Serves one reader on a framed TCP socket (the agent's object port): the cluster
  /// token, then a request (object id, size), answered by raw chunk records, each
  /// {offset, length, CRC-32C} and its bytes, written from the object's mapping. Cheaper
  /// than gRPC by three copies per byte; used when TLS is off.
  void serve_socket(FrameSocket& socket);
  /// The nodes that copied any of `ids` from this node (readers that named themselves),
  /// each with the ids it copied; forgets them. For freeing those copies with the object.
  std::unordered_map<UniqueId, std::vector<ObjectId>> take_copies(const std::vector<ObjectId>& ids);

 private:
  proto::PullObjectReply transfer(const proto::ShmLocation& location);
  // Reads the object over the holding node's object port into `file`. False when that
  // port cannot be reached (the caller then uses gRPC); else `failure` says what went
  // wrong, if anything, and `gone` whether the node no longer holds the object.
  bool read_framed(const std::string& endpoint, const ObjectId& id, uint64_t size, MappedFile& file,
                   std::string* failure, bool* gone);
  // The same over the holding node's agent's gRPC ReadObject stream.
  void read_grpc(const std::string& agent_address, const ObjectId& id, uint64_t size, MappedFile& file,
                 std::string* failure, bool* gone);

  ObjectStore& store_;
  ClusterView& view_;
  ChannelCache& channels_;
  const UniqueId self_;

  struct InFlight {
    bool done = false;
    proto::PullObjectReply reply;
  };
  // Needs nothing held. Remembers that `reader` (if named, and not this node) copied `id`,
  // an object this node holds (the caller found it in the store).
  void note_copy(const ObjectId& id, const UniqueId& reader);

  std::mutex mu_;  // guards in_flight_
  std::condition_variable cv_;
  std::unordered_map<ObjectId, std::shared_ptr<InFlight>> in_flight_;
  std::mutex copies_mu_;  // guards copies_
  std::unordered_map<ObjectId, std::unordered_set<UniqueId>> copies_;  // who read our objects
};

}  // namespace gantry::internal
