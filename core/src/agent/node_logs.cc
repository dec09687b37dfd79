#include "agent/node_logs.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/process.h"
#include "gantry/errors.h"

namespace gantry::internal {
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kDefaultReadBytes = 1u << 20;
constexpr uint32_t kMaxReadBytes = 8u << 20;

// "worker-1234.out" -> 1234; 0 for other names.
int32_t worker_pid(const std::string& name) {
  if (name.rfind("worker-", 0) != 0) return 0;
  size_t dot = name.find('.', 7);
  std::string digits = name.substr(7, dot == std::string::npos ? std::string::npos : dot - 7);
  if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return 0;
  return std::stoi(digits);
}

std::string kind_of(const std::string& name) {
  if (worker_pid(name) != 0) return name.size() > 4 && name.ends_with(".out") ? "worker-output" : "worker-log";
  if (name == "gantry.log") return "node";
  if (name.rfind("driver", 0) == 0) return "driver";
  if (name.ends_with(".log")) return "job";
  return "other";
}

int kind_rank(const std::string& kind) {
  if (kind == "node") return 0;
  if (kind == "driver") return 1;
  if (kind == "worker-output") return 2;
  if (kind == "worker-log") return 3;
  return 4;
}

}  // namespace

proto::ListLogsReply NodeLogs::list() const {
  proto::ListLogsReply reply;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    std::error_code fec;
    if (!entry.is_regular_file(fec)) continue;
    proto::LogFile* f = reply.add_files();
    f->set_name(entry.path().filename().string());
    f->set_size(entry.file_size(fec));
    auto modified = entry.last_write_time(fec);
    auto system = std::chrono::file_clock::to_sys(modified);
    f->set_modified(std::chrono::duration<double>(system.time_since_epoch()).count());
    f->set_pid(worker_pid(f->name()));
    f->set_kind(kind_of(f->name()));
  }
  std::sort(reply.mutable_files()->begin(), reply.mutable_files()->end(),
            [](const proto::LogFile& a, const proto::LogFile& b) {
              int ra = kind_rank(a.kind()), rb = kind_rank(b.kind());
              if (ra != rb) return ra < rb;
              return a.modified() > b.modified();
            });
  return reply;
}

bool NodeLogs::read(const proto::ReadLogRequest& req, proto::ReadLogReply* reply, std::string* error) const {
  const std::string& name = req.name();
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    *error = "'" + name + "' is not a log file name (ListLogs gives them)";
    return false;
  }
  fs::path path = fs::path(dir_) / name;
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(path, ec))) {
    *error = "no log file '" + name + "' on this node";
    return false;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot open log file '" + name + "'";
    return false;
  }
  in.seekg(0, std::ios::end);
  uint64_t size = static_cast<uint64_t>(in.tellg());
  uint32_t max_bytes = req.max_bytes() == 0 ? kDefaultReadBytes : std::min(req.max_bytes(), kMaxReadBytes);
  uint64_t start = 0;
  if (req.offset() < -1) {
    *error = "offset must be -1 (the tail) or a byte offset";
    return false;
  }
  if (req.offset() >= 0) {
    start = std::min<uint64_t>(static_cast<uint64_t>(req.offset()), size);
  } else {
    // The tail: scan back from the end for `tail_lines` line breaks, within max_bytes.
    int lines = req.tail_lines() > 0 ? req.tail_lines() : 1000;
    uint64_t floor = size > max_bytes ? size - max_bytes : 0;
    uint64_t pos = size;
    // A final line break ends the last line; it does not start an empty one.
    if (pos > floor) {
      in.seekg(static_cast<std::streamoff>(pos - 1));
      if (in.get() == '\n') --pos;
    }
    int seen = 0;
    constexpr uint64_t kBlock = 64 * 1024;
    std::string block;
    start = floor;
    while (pos > floor) {
      uint64_t from = pos > floor + kBlock ? pos - kBlock : floor;
      block.resize(pos - from);
      in.seekg(static_cast<std::streamoff>(from));
      in.read(block.data(), static_cast<std::streamsize>(block.size()));
      bool done = false;
      for (size_t i = block.size(); i-- > 0;) {
        if (block[i] == '\n' && ++seen == lines) {
          start = from + i + 1;
          done = true;
          break;
        }
      }
      if (done) break;
      pos = from;
    }
  }
  uint64_t n = std::min<uint64_t>(size - start, max_bytes);
  std::string text(n, '\0');
  in.clear();
  in.seekg(static_cast<std::streamoff>(start));
  in.read(text.data(), static_cast<std::streamsize>(n));
  text.resize(static_cast<size_t>(in.gcount()));
  reply->set_offset(start);
  reply->set_next_offset(start + text.size());
  reply->set_size(size);
  reply->set_text(std::move(text));
  return true;
}

proto::StacksReply thread_stacks(pid_t pid, std::chrono::seconds timeout) {
  if (pid <= 0) throw Error("a pid must be positive");
  struct Tool {
    const char* name;
    std::vector<std::string> argv;
  };
  std::vector<Tool> tools = {
      {"eu-stack", {"eu-stack", "-p", std::to_string(pid)}},
      {"gdb", {"gdb", "-p", std::to_string(pid), "--batch", "-nx", "-ex", "thread apply all bt"}},
  };
  std::string tried;
  for (const Tool& tool : tools) {
    char pattern[] = "/tmp/gantry-stacks-XXXXXX";
    int fd = ::mkstemp(pattern);
    if (fd < 0) throw Error("cannot create a temporary file for the stacks");
    ::close(fd);
    std::string out_path = pattern;
    SpawnOptions options;
    options.search_path = true;
    options.output_file = out_path;
    pid_t child = 0;
    int rc = spawn_process(tool.argv[0], tool.argv, current_environment(), options, &child);
    if (rc != 0) {
      ::unlink(out_path.c_str());
      tried += std::string(tried.empty() ? "" : "; ") + tool.name + ": " + std::strerror(rc);
      continue;
    }
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    bool exited = false;
    while (std::chrono::steady_clock::now() < deadline) {
      pid_t r = ::waitpid(child, &status, WNOHANG);
      if (r == child) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!exited) {
      ::kill(child, SIGKILL);
      ::waitpid(child, &status, 0);
    }
    std::ifstream in(out_path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ::unlink(out_path.c_str());
    // exec failing in the child (tool not installed) exits 127.
    if (exited && WIFEXITED(status) && WEXITSTATUS(status) == 127) {
      tried += std::string(tried.empty() ? "" : "; ") + tool.name + ": not installed";
      continue;
    }
    bool has_frames = text.find("#0") != std::string::npos || text.find("TID") != std::string::npos;
    if (!exited || !has_frames) {
      tried += std::string(tried.empty() ? "" : "; ") + tool.name + (exited ? " printed no stack" : " timed out") +
               (text.empty() ? "" : ": " + text.substr(0, 300));
      continue;
    }
    proto::StacksReply reply;
    reply.set_pid(pid);
    reply.set_tool(tool.name);
    reply.set_text(std::move(text));
    return reply;
  }
  throw Error("cannot read the stacks of pid " + std::to_string(pid) + " (" + tried +
              "); install elfutils (eu-stack) or gdb on the node");
}

}  // namespace gantry::internal
