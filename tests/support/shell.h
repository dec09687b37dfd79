#pragma once

// Running the `gantry` command and other programs from tests and benchmarks that start
// real clusters.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <string>

namespace gantry::test_support {

struct CommandResult {
  int code = -1;
  std::string out;  // stdout and stderr together
};

/// Runs a shell command line and collects its output and exit code (-1 when it did not
/// exit normally).
inline CommandResult run(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

/// Binds TCP socket `fd` to a port the kernel picks on loopback; returns the address.
inline sockaddr_in bind_loopback(int fd) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return addr;
}

/// A loopback TCP port that was free a moment ago.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = bind_loopback(fd);
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// The pid of the node process `gantry start` left in the session directory its output
/// names, or -1.
inline pid_t node_pid(const std::string& start_output) {
  std::smatch m;
  if (!std::regex_search(start_output, m, std::regex("session: (\\S+)"))) return -1;
  std::ifstream in(m[1].str() + "/gantry.pid");
  pid_t pid = -1;
  in >> pid;
  return pid;
}

}  // namespace gantry::test_support
