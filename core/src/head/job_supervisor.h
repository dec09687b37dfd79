#pragma once

#include <sys/types.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "gantry/head.grpc.pb.h"

namespace gantry::internal {

/// Runs programs submitted with `gantry job submit` on the head's machine, each as a
/// driver of the cluster (GANTRY_ADDRESS and GANTRY_TOKEN set), in its own process group,
/// with stdout and stderr in `<logs_dir>/job-<id>.log`.
///
/// Thread-safe: one mutex guards the submissions; a monitor thread reaps exits.
class JobSupervisor final : public proto::JobService::Service {
 public:
  /// `head_address` is what submitted programs join; `logs_dir` holds their output.
  JobSupervisor(std::string head_address, std::string logs_dir);
  /// Stops running programs (SIGTERM to each group, SIGKILL after 3 s).
  ~JobSupervisor() override;

  grpc::Status SubmitJob(grpc::ServerContext*, const proto::SubmitJobRequest*, proto::Submission*) override;
  grpc::Status StopJob(grpc::ServerContext*, const proto::SubmissionRequest*, proto::Submission*) override;
  grpc::Status GetJobLogs(grpc::ServerContext*, const proto::JobLogsRequest*, proto::JobLogs*) override;
  grpc::Status ListSubmissions(grpc::ServerContext*, const proto::Empty*, proto::ListSubmissionsReply*) override;

 private:
  struct Entry {
    proto::Submission info;
    std::string log_path;
    bool stop_requested = false;
    std::chrono::steady_clock::time_point stop_deadline;
  };

  void monitor_loop();

  const std::string head_address_;
  const std::string logs_dir_;
  std::mutex mu_;  // guards submissions_
  std::map<std::string, Entry> submissions_;
  std::atomic<bool> stopping_{false};
  std::thread monitor_;
};

}  // namespace gantry::internal
