#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "gantry/head.pb.h"
#include "gantry/ids.h"
#include "rpc/auth.h"

namespace gantry::internal {

/// The node a driver on this machine works through, as the head lists it.
struct LocalNode {
  UniqueId node_id;
  std::string agent_address;
};

/// A small file's text without trailing newlines and spaces (a pid, an address, the
/// token); empty when it cannot be read.
std::string read_small_file(const std::filesystem::path& path);

/// The root under which sessions live: `temp_dir`, else $TMPDIR/gantry or /tmp/gantry.
std::string session_root(const std::string& temp_dir);

/// The cluster token for the head at `head_address`: `env_token` (GANTRY_TOKEN) when set,
/// else the token file of a session on this machine whose head has that address. Throws
/// gantry::Error saying what to set when neither is there.
std::string find_cluster_token(const std::string& env_token, const std::string& head_address,
                               const std::string& root);

/// The TLS files for the head at `head_address`: GANTRY_TLS_CERT/KEY/CA when set, else
/// those a `gantry start --head` session of that head on this machine recorded, else none.
TlsFiles find_cluster_tls(const std::string& head_address, const std::string& root);

/// The head address recorded by the newest `gantry start --head` session on this machine
/// under `root`, or empty.
std::string latest_head_address(const std::string& root);
/// The dashboard URL of the running head at `head_address` started on this machine under
/// `root`, or "" (another machine's head, or no dashboard).
std::string dashboard_url_for(const std::string& root, const std::string& head_address);

/// Asks the head which node runs on this machine (same host name; of several, the first
/// to register, which on the head's machine is the head's own). Throws gantry::Error when
/// the head cannot be reached or no node of it runs here.
LocalNode find_local_node(const std::string& head_address);

/// The job a driver registers: its own executable (this process's), argv and the
/// settings its workers take over. `remote_output`: workers send their output lines to
/// the driver over RPC (a joined driver) instead of writing to the terminal they inherit.
proto::JobSpec make_job_spec(const UniqueId& job_id, const std::vector<std::string>& argv,
                             const std::string& driver_address, const std::string& log_level, bool log_to_driver,
                             bool remote_output);

/// Puts the digest of this process's executable in `job` and sends the executable to the
/// head unless it has it already, so nodes without the file can fetch it. Throws
/// gantry::Error when it cannot be read or sent.
void send_executable(const std::string& head_address, proto::JobSpec* job);
/// Registers `job` with the head; throws gantry::Error with the head's answer.
void register_job(const std::string& head_address, const proto::JobSpec& job);
/// Tells the head the job is over and returns once its workers have stopped everywhere
/// (up to 15 s). Best effort.
void finish_job(const std::string& head_address, const UniqueId& job_id);

}  // namespace gantry::internal
