#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace gantry::internal {

/// In a worker: captures the process's stdout and stderr (fd 1 and 2) and copies each
/// line, prefixed "(label pid=N)", to the original stream (the driver's terminal) and to
/// the worker's log file. The label is the function or actor running.
class OutputForwarder {
 public:
  /// Where lines go instead of the original stream: called on the forwarding thread
  /// with 1 (stdout) or 2 (stderr) and whole prefixed lines, in order.
  using Sink = std::function<void(int stream, const std::string& text)>;

  /// Starts capturing. `to_terminal` false keeps lines in the log file only; a `sink`
  /// takes the terminal's place (a joined driver's terminal, reached over RPC).
  OutputForwarder(const std::string& log_path, bool to_terminal, Sink sink = nullptr);
  ~OutputForwarder();

  /// Sets the label for lines written from now on. Output already written keeps the
  /// old label. Cheap when the label does not change. Thread-safe.
  void set_label(const std::string& label);
  /// Flushes stdio and waits until everything written so far has been forwarded.
  void flush();

 private:
  void run();
  /// Sends a control message and waits for the forwarder's acknowledgement; mu_ held.
  void request_locked(const std::string& msg);

  int saved_out_ = -1, saved_err_ = -1;  // the original fd 1 and 2
  int out_pipe_ = -1, err_pipe_ = -1;    // read ends
  int control_[2] = {-1, -1};            // label changes, flush and stop requests
  int ack_[2] = {-1, -1};                // the forwarder's acknowledgements
  int log_fd_ = -1;
  bool to_terminal_;
  Sink sink_;
  std::mutex mu_;  // guards current_label_; one control request at a time
  std::string current_label_;
  std::thread thread_;
};

}  // namespace gantry::internal
