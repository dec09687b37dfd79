#include "gantry/errors.h"

namespace gantry {
namespace {

std::string describe(const std::string& type, const std::string& message, const RemoteSite& site) {
  std::string out = type + ": " + message + " (in " + site.function;
  if (!site.node.empty()) out += " on node " + site.node;
  if (site.pid != 0) out += ", pid " + std::to_string(site.pid);
  return out + ")";
}

}  // namespace

TaskError::TaskError(std::string remote_type, std::string remote_message, RemoteSite site)
    : Error(describe(remote_type, remote_message, site)),
      remote_type_(std::move(remote_type)),
      remote_message_(std::move(remote_message)),
      site_(std::move(site)) {}

}  // namespace gantry
