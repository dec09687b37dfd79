#pragma once

#include <string>

namespace gantry::internal {

/// `gantry list tasks|objects`: asks every owner in the cluster (the drivers of running
/// jobs and every node's workers) for the tasks it has in flight or the objects it owns,
/// and prints them, at most `limit` rows, then a summary. The head at `address` names the
/// owners; the cluster token must be set. Returns the exit code.
int list_owned_command(const std::string& what, const std::string& address, int limit);

}  // namespace gantry::internal
