// Every gantry endpoint requires the cluster token: the test starts the embedded cluster,
// finds every gRPC socket of the session (head, agent, driver, workers) and calls every
// method of every gantry service on each with no token and with a wrong one, over plain
// channels that add nothing. Methods are enumerated from the protobuf descriptors, so a
// new handler that forgets the check fails here.
#include <gantry/gantry.h>
#include <google/protobuf/descriptor.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gantry/head.pb.h"
#include "rpc/frame_socket.h"
#include "support/generic_call.h"

using namespace std::chrono_literals;

using gantry::test_support::call_generic;

namespace {

int add_one(int x) { return x + 1; }

}  // namespace

GANTRY_REMOTE(add_one);

namespace {

/// The full names ("/gantry.proto.Head/KvPut") of every method of gantry's services.
std::vector<std::string> all_methods() {
  std::vector<std::string> out;
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const char* service : {"gantry.proto.Head", "gantry.proto.NodeAgent", "gantry.proto.WorkerService"}) {
    const auto* s = pool->FindServiceByName(service);
    if (s == nullptr) {
      ADD_FAILURE() << "service " << service << " is not linked into this test";
      continue;
    }
    for (int i = 0; i < s->method_count(); ++i) out.push_back("/" + std::string(service) + "/" + s->method(i)->name());
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string serialize(const google::protobuf::Message& m) { return m.SerializeAsString(); }

class Auth : public ::testing::Test {
 protected:
  void SetUp() override {
    gantry::init({.num_cpus = 2});
    session_ = gantry::runtime_context().session_dir;
    token_ = read_file(session_ + "/token");
    // Wait for the pre-started workers' sockets too, so they are checked as well.
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (socket_files().size() < 5 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
  }
  void TearDown() override { gantry::shutdown(); }

  std::vector<std::string> socket_files() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(session_ + "/sockets"))
      if (e.path().extension() == ".sock") out.push_back(e.path().string());
    return out;
  }

  std::string session_;
  std::string token_;
};

TEST_F(Auth, TokenFileIsPrivateAndSocketsDirectoryIsClosed) {
  ASSERT_EQ(token_.size(), 64u);
  struct stat st {};
  ASSERT_EQ(::stat((session_ + "/token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((session_ + "/sockets").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0u) << "others can reach the session's sockets";
}

TEST_F(Auth, EveryMethodOnEveryEndpointRefusesCallsWithoutTheToken) {
  std::vector<std::string> sockets = socket_files();
  ASSERT_GE(sockets.size(), 5u) << "expected head, agent, driver and two workers";
  std::vector<std::string> methods = all_methods();
  ASSERT_GE(methods.size(), 20u);
  for (const auto& path : sockets) {
    auto channel = grpc::CreateChannel("unix:" + path, grpc::InsecureChannelCredentials());
    for (const auto& method : methods) {
      for (const std::string& token : {std::string(), std::string(64, '0'), token_ + "x", token_.substr(1)}) {
        grpc::Status s = call_generic(channel, method, token, "", 5s);
        // A service that does not live on this endpoint answers UNIMPLEMENTED; one that
        // does must refuse.
        if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) continue;
        EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
            << method << " on " << path << " with token '" << token << "': " << s.error_message();
      }
    }
  }
  // The right token gets through (a harmless call), so the refusals above were not an
  // accident of how the test calls.
  auto head = grpc::CreateChannel("unix:" + session_ + "/sockets/head.sock", grpc::InsecureChannelCredentials());
  EXPECT_TRUE(call_generic(head, "/gantry.proto.Head/ListActors", token_, "", 5s).ok());
  // The cluster still works.
  EXPECT_EQ(gantry::task(add_one).remote(41).get(), 42);
}

TEST_F(Auth, RefusedCallsChangeNothingAndAreLogged) {
  auto head = grpc::CreateChannel("unix:" + session_ + "/sockets/head.sock", grpc::InsecureChannelCredentials());
  gantry::proto::KvRequest put;
  put.set_key("planted");
  put.set_value("by an intruder");
  put.set_cluster(true);
  ::testing::internal::CaptureStderr();
  grpc::Status refused = call_generic(head, "/gantry.proto.Head/KvPut", "not-the-token", serialize(put), 5s);
  std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(refused.error_message().find("GANTRY_TOKEN"), std::string::npos) << "the error says what to do";
  EXPECT_NE(log.find("refused KvPut"), std::string::npos) << log;
  EXPECT_NE(log.find("wrong cluster token"), std::string::npos) << log;

  gantry::proto::KvRequest get;
  get.set_key("planted");
  get.set_cluster(true);
  grpc::ByteBuffer reply;
  ASSERT_TRUE(call_generic(head, "/gantry.proto.Head/KvGet", token_, serialize(get), 5s, &reply).ok());
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(reply.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  gantry::proto::KvReply kv;
  ASSERT_TRUE(kv.ParseFromString(bytes));
  EXPECT_FALSE(kv.found()) << "a refused KvPut stored its value";
}

TEST_F(Auth, WorkerTaskSocketsHangUpOnAWrongToken) {
  std::vector<std::string> task_sockets;
  for (const auto& e : std::filesystem::directory_iterator(session_ + "/sockets"))
    if (e.path().extension() == ".tasks") task_sockets.push_back(e.path().string());
  ASSERT_FALSE(task_sockets.empty());
  for (const auto& path : task_sockets) {
    std::string error;
    auto socket = gantry::internal::FrameSocket::connect_unix(path, &error);
    ASSERT_TRUE(socket) << error;
    ASSERT_TRUE(socket->write("wrong"));
    std::string frame;
    EXPECT_FALSE(socket->read(&frame)) << path << " answered a caller with a wrong token";
  }
  EXPECT_EQ(gantry::task(add_one).remote(1).get(), 2);
}

}  // namespace

int main(int argc, char** argv) {
  // This executable is also its own worker: in a worker, init serves tasks, never returns.
  if (std::getenv("GANTRY_WORKER") != nullptr) gantry::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
