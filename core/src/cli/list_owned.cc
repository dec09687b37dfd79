#include "cli/list_owned.h"

#include <cstdio>
#include <map>
#include <vector>

#include "dashboard/cluster_source.h"
#include "gantry/errors.h"
#include "gantry/ids.h"
#include "gantry/worker.grpc.pb.h"
#include "rpc/grpc_util.h"

namespace gantry::internal {
namespace {

constexpr auto kOwnerDeadline = std::chrono::seconds(10);  // a busy owner still answers

std::string short_owner(const proto::OwnedState& s) {
  return std::to_string(s.pid()) + "@" + s.owner_address();
}

}  // namespace

int list_owned_command(const std::string& what, const std::string& address, int limit) {
  int unreachable_nodes = 0;
  std::vector<ClusterSource::Owner> owners;
  try {
    owners = ClusterSource(address).owners(&unreachable_nodes);
  } catch (const ApiError& e) {
    throw Error(e.message + " (head " + address + ")");
  }
  std::vector<proto::OwnedState> states;
  int silent = 0;
  for (const auto& owner : owners) {
    auto stub = proto::WorkerService::NewStub(make_channel(owner.address));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kOwnerDeadline);
    proto::ListOwnedRequest req;
    req.set_tasks(what == "tasks");
    req.set_objects(what == "objects");
    req.set_limit(limit);
    proto::OwnedState state;
    if (stub->ListOwned(&ctx, req, &state).ok())
      states.push_back(std::move(state));
    else
      ++silent;  // it may have just exited
  }
  int rows = 0;
  bool truncated = false;
  if (what == "tasks") {
    std::printf("%-34s %-15s %-28s %-30s %s\n", "TASK ID", "STATE", "NAME", "WHERE", "OWNER");
    std::map<std::string, std::pair<int64_t, int64_t>> counts;
    for (const auto& s : states) {
      truncated |= s.truncated();
      for (const auto& t : s.tasks()) {
        if (rows >= limit) {
          truncated = true;
          break;
        }
        ++rows;
        std::string where = t.worker_address().empty()
                                ? std::string("-")
                                : (t.worker_pid() > 0 ? std::to_string(t.worker_pid()) + "@" : "") + t.worker_address();
        std::printf("%-34s %-15s %-28s %-30s %s\n", UniqueId::from_binary(t.task_id()).hex().c_str(), t.state().c_str(),
                    t.name().c_str(), where.c_str(), short_owner(s).c_str());
      }
      for (const auto& c : s.counts()) {
        counts[c.name()].first += c.finished();
        counts[c.name()].second += c.failed();
      }
    }
    std::printf("\n%-40s %12s %12s\n", "FUNCTION", "FINISHED", "FAILED");
    for (const auto& [name, c] : counts) std::printf("%-40s %12lld %12lld\n", name.c_str(), static_cast<long long>(c.first), static_cast<long long>(c.second));
  } else {
    std::printf("%-34s %-14s %12s %-10s %6s %9s %9s  %s\n", "OBJECT ID", "LOCATION", "BYTES", "NODE", "REFS",
                "TASK-ARGS", "BORROWERS", "OWNER");
    uint64_t total = 0;
    for (const auto& s : states) {
      truncated |= s.truncated();
      for (const auto& o : s.objects()) {
        total += o.size();
        if (rows >= limit) {
          truncated = true;
          continue;
        }
        ++rows;
        std::string node = o.node_id().size() >= 20 ? o.node_id().substr(0, 4) + o.node_id().substr(16, 4) : "-";
        std::printf("%-34s %-14s %12llu %-10s %6lld %9lld %9d  %s\n", UniqueId::from_binary(o.object_id()).hex().c_str(),
                    o.location().c_str(), static_cast<unsigned long long>(o.size()), node.c_str(),
                    static_cast<long long>(o.local_refs()), static_cast<long long>(o.submitted_refs()), o.borrowers(),
                    short_owner(s).c_str());
      }
    }
    std::printf("\n%d object(s) listed, %.1f MiB in all\n", rows, static_cast<double>(total) / (1024.0 * 1024.0));
  }
  std::printf("%zu owner(s) asked", states.size());
  if (silent > 0) std::printf(", %d did not answer (exited?)", silent);
  if (unreachable_nodes > 0) std::printf(", %d node(s) unreachable", unreachable_nodes);
  if (truncated) std::printf("; more than %d rows: pass --limit to see more", limit);
  std::printf("\n");
  return 0;
}

}  // namespace gantry::internal
