// A rank's program as a child process: its lines per stream, its exit status, its
// environment and directory, and how it is stopped.

#include "child_process.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace gantry::train::launch {
namespace {

using namespace std::chrono_literals;

/// Collects what a ChildProcess hands over.
struct Collected {
  std::mutex mu;
  std::vector<std::string> out, err;
  int exits = 0;

  ChildProcess::LineSink lines() {
    return [this](int stream, std::string line) {
      std::lock_guard<std::mutex> lock(mu);
      (stream == ChildProcess::kStdout ? out : err).push_back(std::move(line));
    };
  }
  ChildProcess::ExitSink exit() {
    return [this](const ExitStatus&) {
      std::lock_guard<std::mutex> lock(mu);
      ++exits;
    };
  }
};

// Waits (up to 10 s) for the program's first stdout line.
void wait_for_output(Collected& c) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> lock(c.mu);
      if (!c.out.empty()) return;
    }
    std::this_thread::sleep_for(10ms);
  }
  FAIL() << "no output";
}

ChildProcess::Spec shell(const std::string& script, std::vector<std::string> env = {"PATH=/usr/bin:/bin"}) {
  return {.path = "/bin/sh", .argv = {"sh", "-c", script}, .environment = std::move(env)};
}

TEST(ChildProcessTest, HandsOverEachStreamsLinesAndTheExitStatus) {
  Collected c;
  ChildProcess child(shell("echo one; echo two >&2; printf 'three\\nfour'; exit 3"), c.lines(), c.exit());
  std::optional<ExitStatus> status = child.wait_for(10s);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->code, 3);
  EXPECT_EQ(status->signal, 0);
  EXPECT_FALSE(status->success());
  EXPECT_EQ(status->describe(), "exited with status 3");
  EXPECT_EQ(c.out, (std::vector<std::string>{"one", "three", "four"}));  // the unfinished last line too
  EXPECT_EQ(c.err, (std::vector<std::string>{"two"}));
  EXPECT_EQ(c.exits, 1);
}

TEST(ChildProcessTest, RunsWithExactlyTheGivenEnvironmentAndDirectory) {
  Collected c;
  ChildProcess::Spec spec = shell("echo \"$RANK $GANTRY_WORKER\"; pwd", {"RANK=4", "PATH=/usr/bin:/bin"});
  spec.working_dir = "/tmp";
  ChildProcess child(spec, c.lines(), c.exit());
  ASSERT_TRUE(child.wait_for(10s).has_value());
  EXPECT_EQ(c.out, (std::vector<std::string>{"4 ", "/tmp"}));
}

TEST(ChildProcessTest, AProgramThatCannotBeExecutedIsAnErrorNamingIt) {
  Collected c;
  try {
    ChildProcess child({.path = "/nonexistent/trainer", .argv = {"trainer"}}, c.lines(), c.exit());
    FAIL() << "started";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot execute /nonexistent/trainer"), std::string::npos) << e.what();
  }
}

TEST(ChildProcessTest, LongLinesArriveInPieces) {
  Collected c;
  ChildProcess child(shell("head -c 200000 /dev/zero | tr '\\0' x; echo; echo end"), c.lines(), c.exit());
  ASSERT_TRUE(child.wait_for(10s).has_value());
  ASSERT_GE(c.out.size(), 4u);
  EXPECT_EQ(c.out.front().size(), 64u * 1024);
  EXPECT_EQ(c.out.back(), "end");
  size_t total = 0;
  for (size_t i = 0; i + 1 < c.out.size(); ++i) total += c.out[i].size();
  EXPECT_EQ(total, 200000u);
}

TEST(ChildProcessTest, TerminateEndsTheProgramWithSigtermEvenIfTheCallerBlocksIt) {
  // Gantry's workers block SIGTERM in every thread; the program must not inherit that.
  sigset_t term, old;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, &old);
  Collected c;
  auto child = std::make_unique<ChildProcess>(shell("echo started; exec sleep 30"), c.lines(), c.exit());
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  wait_for_output(c);
  auto start = std::chrono::steady_clock::now();
  ExitStatus status = child->terminate(10s);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_EQ(status.signal, SIGTERM);
  EXPECT_EQ(status.describe(), "was killed by signal 15 (SIGTERM)");
}

TEST(ChildProcessTest, TerminateKillsAProgramThatIgnoresSigtermAfterTheGrace) {
  Collected c;
  ChildProcess child(shell("trap '' TERM; echo ready; while true; do sleep 0.1; done"), c.lines(), c.exit());
  wait_for_output(c);
  auto start = std::chrono::steady_clock::now();
  ExitStatus status = child.terminate(300ms);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
  EXPECT_EQ(status.signal, SIGKILL);
}

TEST(ChildProcessTest, WhatTheProgramLeftRunningInItsGroupEndsWithIt) {
  Collected c;
  ChildProcess child(shell("sleep 30 & echo $!; exit 0"), c.lines(), c.exit());
  std::optional<ExitStatus> status = child.wait_for(5s);  // not 30 s: the sleep holds the pipes
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->success());
  ASSERT_EQ(c.out.size(), 1u);
  pid_t left = std::stoi(c.out[0]);
  // Killed; it may linger as a zombie until its new parent reaps it.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  std::string state = "?";
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream stat("/proc/" + std::to_string(left) + "/stat");
    std::string pid, comm;
    if (!(stat >> pid >> comm >> state) || state == "Z") break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(state == "Z" || !std::ifstream("/proc/" + std::to_string(left) + "/stat")) << state;
}

TEST(ChildProcessTest, DestroyingItKillsTheProgram) {
  Collected c;
  pid_t pid = 0;
  {
    ChildProcess child(shell("exec sleep 30"), c.lines(), c.exit());
    pid = child.pid();
    ASSERT_GT(pid, 0);
  }
  EXPECT_EQ(c.exits, 1);
  EXPECT_FALSE(std::ifstream("/proc/" + std::to_string(pid) + "/stat"));  // reaped
}

}  // namespace
}  // namespace gantry::train::launch
