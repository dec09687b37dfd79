#include "runtime/output_forwarder.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace gantry::internal {
namespace {

// Control messages: 'L' + 4-byte length + label (acknowledged), 'F' (acknowledged), 'Q'.
void write_all(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
}

bool read_exact(int fd, void* out, size_t n) {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

int redirect(int fd, int* read_end) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return -1;
  int saved = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
  ::dup2(p[1], fd);
  ::close(p[1]);
  ::fcntl(p[0], F_SETFL, O_NONBLOCK);
  *read_end = p[0];
  return saved;
}

struct Stream {
  int in;
  int out;
  std::string partial;
};

}  // namespace

OutputForwarder::OutputForwarder(const std::string& log_path, bool to_terminal, Sink sink)
    : to_terminal_(to_terminal), sink_(std::move(sink)) {
  std::fflush(stdout);
  std::fflush(stderr);
  log_fd_ = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  saved_out_ = redirect(STDOUT_FILENO, &out_pipe_);
  saved_err_ = redirect(STDERR_FILENO, &err_pipe_);
  // Line-buffer stdout so output appears as a task writes it, not when the pipe fills.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  ::pipe2(control_, O_CLOEXEC);
  ::pipe2(ack_, O_CLOEXEC);
  thread_ = std::thread([this] { run(); });
}

OutputForwarder::~OutputForwarder() {
  flush();
  {
    std::lock_guard<std::mutex> lock(mu_);
    write_all(control_[1], "Q", 1);
  }
  if (thread_.joinable()) thread_.join();
  // Put the original streams back so late writes still reach the terminal.
  if (saved_out_ >= 0) ::dup2(saved_out_, STDOUT_FILENO);
  if (saved_err_ >= 0) ::dup2(saved_err_, STDERR_FILENO);
  for (int fd : {saved_out_, saved_err_, out_pipe_, err_pipe_, control_[0], control_[1], ack_[0], ack_[1], log_fd_})
    if (fd >= 0) ::close(fd);
}

void OutputForwarder::set_label(const std::string& label) {
  std::lock_guard<std::mutex> lock(mu_);
  if (label == current_label_) return;
  current_label_ = label;
  std::string msg = "L";
  uint32_t n = static_cast<uint32_t>(label.size());
  msg.append(reinterpret_cast<const char*>(&n), 4);
  msg += label;
  request_locked(msg);
}

void OutputForwarder::flush() {
  std::lock_guard<std::mutex> lock(mu_);
  request_locked("F");
}

void OutputForwarder::request_locked(const std::string& msg) {
  // Everything written so far must go out under the old label, and nothing new may be
  // written until the forwarder has switched: so wait for its acknowledgement.
  std::fflush(stdout);
  std::fflush(stderr);
  write_all(control_[1], msg.data(), msg.size());
  char c;
  read_exact(ack_[0], &c, 1);
}

void OutputForwarder::run() {
  Stream streams[2] = {{out_pipe_, saved_out_, {}}, {err_pipe_, saved_err_, {}}};
  std::string label;
  std::string prefix;
  auto make_prefix = [&] { prefix = "(" + (label.empty() ? std::string("worker") : label) + " pid=" +
                                    std::to_string(::getpid()) + ") "; };
  make_prefix();
  // Lines of one drain go to a sink together (one call, not one per line).
  std::string pending[2];
  auto emit = [&](Stream& s, const std::string& line) {
    std::string out = prefix + line + "\n";
    if (to_terminal_ && sink_) pending[&s == &streams[1]] += out;
    else if (to_terminal_ && s.out >= 0) write_all(s.out, out.data(), out.size());
    if (log_fd_ >= 0) write_all(log_fd_, out.data(), out.size());
  };
  auto send_pending = [&] {
    for (int i = 0; i < 2; ++i)
      if (!pending[i].empty()) {
        sink_(i + 1, pending[i]);
        pending[i].clear();
      }
  };
  // Reads what is in the pipe now; complete lines go out with the current label.
  auto drain = [&](Stream& s, bool final) {
    char buf[65536];
    while (true) {
      ssize_t r = ::read(s.in, buf, sizeof buf);
      if (r <= 0) break;
      s.partial.append(buf, static_cast<size_t>(r));
    }
    size_t start = 0, nl;
    while ((nl = s.partial.find('\n', start)) != std::string::npos) {
      emit(s, s.partial.substr(start, nl - start));
      start = nl + 1;
    }
    s.partial.erase(0, start);
    if (final && !s.partial.empty()) {
      emit(s, s.partial);
      s.partial.clear();
    }
  };
  while (true) {
    pollfd fds[3] = {{out_pipe_, POLLIN, 0}, {err_pipe_, POLLIN, 0}, {control_[0], POLLIN, 0}};
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents) drain(streams[0], false);
    if (fds[1].revents) drain(streams[1], false);
    send_pending();
    if (fds[2].revents & POLLIN) {
      char type;
      if (!read_exact(control_[0], &type, 1)) return;
      // Everything written before this control message is already in the pipes: it
      // belongs to the old label.
      drain(streams[0], type != 'L');
      drain(streams[1], type != 'L');
      send_pending();
      if (type == 'L') {
        uint32_t n = 0;
        read_exact(control_[0], &n, 4);
        label.assign(n, '\0');
        read_exact(control_[0], label.data(), n);
        make_prefix();
        write_all(ack_[1], "k", 1);
      } else if (type == 'F') {
        write_all(ack_[1], "k", 1);
      } else {
        return;
      }
    }
  }
}

}  // namespace gantry::internal
