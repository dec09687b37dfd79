#include "rpc/frame_socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <future>
#include <string>
#include <thread>
#include <vector>

namespace gantry::internal {
namespace {

struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    a = std::make_unique<FrameSocket>(fds[0]);
    b = std::make_unique<FrameSocket>(fds[1]);
  }
  std::unique_ptr<FrameSocket> a, b;
};

std::string frame_of(size_t size, char fill) { return std::string(size, fill); }

TEST(FrameSocketTest, FramesArriveWholeAndInOrder) {
  SocketPair p;
  std::vector<std::string> sent = {"", "x", frame_of(100'000, 'a'), frame_of(3, 'b')};
  std::thread writer([&] {
    for (const auto& f : sent) ASSERT_TRUE(p.a->write(f));
    p.a->shutdown_write();
  });
  std::string got;
  for (const auto& f : sent) {
    ASSERT_TRUE(p.b->read(&got));
    EXPECT_EQ(got, f);
  }
  EXPECT_FALSE(p.b->read(&got));
  EXPECT_TRUE(p.b->reached_end());
  writer.join();
}

TEST(FrameSocketTest, OversizedLengthIsAnErrorNotAnAllocation) {
  SocketPair p;
  uint32_t huge = FrameSocket::kMaxFrame + 1;
  ASSERT_EQ(::send(p.a->fd(), &huge, sizeof huge, 0), static_cast<ssize_t>(sizeof huge));
  std::string got;
  EXPECT_FALSE(p.b->read(&got));
  EXPECT_NE(p.b->error().find("over the limit"), std::string::npos) << p.b->error();
}

// Both ends write more than the socket buffers hold before reading. With plain writes
// this deadlocks; write_reading on one side takes the peer's frames while it waits, so
// one thread there both sends and receives, as the task executor does.
TEST(FrameSocketTest, WriteReadingTakesPeerFramesWhileTheBufferIsFull) {
  SocketPair p;
  constexpr int kFrames = 64;
  const std::string big = frame_of(256 * 1024, 'r');  // 16 MiB each way in total
  std::thread peer([&] {
    for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(p.a->write(big + std::to_string(i)));
    std::string got;
    for (int i = 0; i < kFrames; ++i) {
      ASSERT_TRUE(p.a->read(&got));
      std::string head = "result " + std::to_string(i) + "|";
      EXPECT_EQ(got.substr(0, head.size()), head);
      EXPECT_EQ(got.size(), head.size() + 200 * 1024);
    }
    p.a->shutdown_write();
  });
  std::vector<std::string> taken;
  auto take = [&](std::string& frame) {
    taken.push_back(std::move(frame));
    return true;
  };
  auto done = std::async(std::launch::async, [&] {
    // Frames are also taken by plain reads in between, so write_reading finds whole
    // frames already buffered (the case that once corrupted the buffer arithmetic).
    std::string got;
    for (int i = 0; i < kFrames; ++i) {
      if (i % 8 == 0 && taken.size() < kFrames && p.b->read(&got)) taken.push_back(got);
      std::string result = "result " + std::to_string(i) + "|" + std::string(200 * 1024, 'w');
      if (!p.b->write_reading(result, take)) return false;
    }
    while (taken.size() < kFrames && p.b->read(&got)) taken.push_back(got);
    return true;
  });
  bool finished = done.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  if (!finished) {  // unblock both threads so the failure is reported, not a hang
    p.a->shutdown_both();
    p.b->shutdown_both();
  }
  peer.join();
  ASSERT_TRUE(finished) << "write_reading deadlocked";
  EXPECT_TRUE(done.get());
  ASSERT_EQ(taken.size(), static_cast<size_t>(kFrames));
  for (int i = 0; i < kFrames; ++i) EXPECT_EQ(taken[i], big + std::to_string(i)) << "frame " << i;
}

TEST(FrameSocketTest, WriteReadingStopsWhenTheHandlerRefuses) {
  SocketPair p;
  std::thread peer([&] {
    // Fill our side so write_reading must wait, then send a frame it will refuse.
    for (int i = 0; i < 16; ++i) p.a->write(frame_of(512 * 1024, 'x'));
  });
  const std::string big = frame_of(8 << 20, 'y');
  bool ok = p.b->write_reading(big, [](std::string&) { return false; });
  EXPECT_FALSE(ok);
  p.b->shutdown_both();
  p.a->shutdown_both();
  peer.join();
}

TEST(FrameSocketTest, TcpListenerServesFramesOnThePortItNames) {
  std::unique_ptr<FrameListener> listener = FrameListener::tcp("127.0.0.1");
  ASSERT_EQ(listener->endpoint().rfind("tcp:127.0.0.1:", 0), 0u) << listener->endpoint();
  std::thread server([&] {
    auto socket = listener->accept();
    ASSERT_TRUE(socket);
    std::string frame;
    while (socket->read(&frame)) ASSERT_TRUE(socket->write("echo:" + frame));
  });
  std::string error;
  auto client = FrameSocket::connect(listener->endpoint(), &error);
  ASSERT_TRUE(client) << error;
  std::string got;
  ASSERT_TRUE(client->write(frame_of(200'000, 'z')));
  ASSERT_TRUE(client->read(&got));
  EXPECT_EQ(got, "echo:" + frame_of(200'000, 'z'));
  client->shutdown_write();
  server.join();
  EXPECT_FALSE(FrameSocket::connect("tcp:nohost", &error));
  EXPECT_NE(error.find("tcp:host:port"), std::string::npos) << error;
  EXPECT_FALSE(FrameSocket::connect("udp:1.2.3.4:5", &error));
}

TEST(FrameSocketTest, ReadRefusesFramesOverTheGivenLimit) {
  SocketPair p;
  ASSERT_TRUE(p.a->write(frame_of(5000, 'q')));
  std::string got;
  EXPECT_FALSE(p.b->read(&got, 4096));
  EXPECT_NE(p.b->error().find("over the limit"), std::string::npos) << p.b->error();
}

TEST(SplitHostPort, AcceptsHostsAndBracketedIpv6AndRefusesTheRest) {
  std::string host;
  int port = 0;
  ASSERT_TRUE(split_host_port("10.0.0.5:6380", &host, &port));
  EXPECT_EQ(host, "10.0.0.5");
  EXPECT_EQ(port, 6380);
  ASSERT_TRUE(split_host_port("[::1]:80", &host, &port));
  EXPECT_EQ(host, "::1");
  for (const char* bad : {"", "host", ":80", "host:", "host:x1", "host:99999", "::1:80", "unix:/tmp/s"})
    EXPECT_FALSE(split_host_port(bad, &host, &port)) << bad;
}

}  // namespace
}  // namespace gantry::internal
