// The head's store of job executables, by content digest (see ExecutableStore).
#include <cstdio>
#include <vector>

#include "common/logging.h"
#include "head/head_service.h"
#include "rpc/auth.h"

namespace gantry::internal {
namespace {

constexpr size_t kChunkBytes = 1 << 20;
constexpr uint64_t kMaxExecutableBytes = uint64_t{8} << 30;

}  // namespace

grpc::Status HeadService::HasExecutable(grpc::ServerContext* ctx, const proto::ExecutableRef* req,
                                        proto::HasExecutableReply* reply) {
  GANTRY_REQUIRE_TOKEN(ctx);
  reply->set_has(executables_ && executables_->has(req->digest()));
  return grpc::Status::OK;
}

grpc::Status HeadService::PutExecutable(grpc::ServerContext* ctx, grpc::ServerReader<proto::ExecutableChunk>* reader,
                                        proto::Empty*) {
  GANTRY_REQUIRE_TOKEN(ctx);
  if (!executables_) return {grpc::StatusCode::UNIMPLEMENTED, "this head keeps no executables"};
  proto::ExecutableChunk chunk;
  if (!reader->Read(&chunk)) return {grpc::StatusCode::INVALID_ARGUMENT, "no executable was sent"};
  const std::string digest = chunk.digest();
  if (!ExecutableStore::valid_digest(digest))
    return {grpc::StatusCode::INVALID_ARGUMENT, "an executable's digest must be 64 lowercase hex digits"};
  if (chunk.size() > kMaxExecutableBytes)
    return {grpc::StatusCode::INVALID_ARGUMENT, "executable of " + std::to_string(chunk.size()) + " bytes is too large"};
  if (executables_->has(digest)) {
    while (reader->Read(&chunk)) {
    }
    return grpc::Status::OK;
  }
  std::unique_ptr<ExecutableStore::Writer> writer;
  try {
    writer = executables_->begin(digest, chunk.size());
  } catch (const std::exception& e) {
    return {grpc::StatusCode::INTERNAL, e.what()};
  }
  do {
    if (!writer->append(chunk.data().data(), chunk.data().size()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "executable " + digest.substr(0, 12) + ": " + writer->error()};
  } while (reader->Read(&chunk));
  if (std::string why = writer->commit(); !why.empty())
    return {grpc::StatusCode::DATA_LOSS, "executable " + digest.substr(0, 12) + " not kept: " + why};
  GANTRY_LOG_INFO("keeping executable {} ({:.1f} MiB) for nodes that lack it", digest.substr(0, 12),
                  static_cast<double>(chunk.size()) / (1024.0 * 1024.0));
  return grpc::Status::OK;
}

grpc::Status HeadService::GetExecutable(grpc::ServerContext* ctx, const proto::ExecutableRef* req,
                                        grpc::ServerWriter<proto::ExecutableChunk>* writer) {
  GANTRY_REQUIRE_TOKEN(ctx);
  if (!executables_ || !executables_->has(req->digest()))
    return {grpc::StatusCode::NOT_FOUND, "the head has no executable " + req->digest().substr(0, 12) +
                                             " (its driver did not send it: was the driver started from a "
                                             "different gantry version?)"};
  std::string path = executables_->path_of(req->digest());
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return {grpc::StatusCode::INTERNAL, "cannot read " + path};
  std::fseek(f, 0, SEEK_END);
  long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<char> buffer(kChunkBytes);
  proto::ExecutableChunk chunk;
  chunk.set_digest(req->digest());
  chunk.set_size(static_cast<uint64_t>(size));
  size_t n;
  bool first = true;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), f)) > 0 || first) {
    chunk.set_data(buffer.data(), n);
    if (!writer->Write(chunk)) break;
    chunk.Clear();
    first = false;
    if (n == 0) break;
  }
  std::fclose(f);
  return grpc::Status::OK;
}

}  // namespace gantry::internal
