#pragma once

// One gRPC call by method name with raw bytes, for tests that must reach a service the
// way any client could (no generated stub, optionally no token).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

namespace gantry::test_support {

/// Calls `method` ("/gantry.proto.Head/KvPut") on `channel` with one request message of
/// `payload` bytes, adding `token` as the `gantry-token` metadata unless it is empty.
/// Stores the first reply message in `reply` when given; returns the call's status.
inline grpc::Status call_generic(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                                 const std::string& token, const std::string& payload,
                                 std::chrono::milliseconds deadline, grpc::ByteBuffer* reply = nullptr) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  if (!token.empty()) ctx.AddMetadata("gantry-token", token);
  grpc::CompletionQueue cq;
  void* tag = nullptr;
  bool ok = false;
  auto rpc = stub.PrepareCall(&ctx, method, &cq);
  rpc->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  grpc::Slice slice(payload);
  grpc::ByteBuffer request(&slice, 1);
  rpc->WriteLast(request, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  grpc::ByteBuffer response;
  rpc->Read(&response, reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  if (ok && reply != nullptr) *reply = response;
  grpc::Status status;
  rpc->Finish(&status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

}  // namespace gantry::test_support
