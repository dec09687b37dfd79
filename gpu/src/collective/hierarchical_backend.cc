// Hierarchical collectives for groups with several ranks on each of several nodes: shared
// memory inside each node, gantry's authenticated TCP connections (tcp_backend.cc) among
// one leader per node, so the network carries one copy of the data per node instead of
// one per rank.
//
//   allreduce  = local reduce to the node's leader, leaders' allreduce, local broadcast
//   broadcast  = to the root node's leader locally, leaders' broadcast, local broadcast
//   reduce     = an allreduce whose result only the root keeps
//   barrier    = local, leaders, local
// allgather, reduce_scatter and point-to-point go through a TCP group of all ranks
// (their data is per rank, so a node-level detour would not save network traffic).
#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "collective/backend.h"
#include "collective/reduce_kernels.h"

namespace gantry::collective::detail {
namespace {

// Keys of a sub-group live under their own prefix of the group's store.
class PrefixStore final : public Store {
 public:
  PrefixStore(std::shared_ptr<Store> inner, std::string prefix) : inner_(std::move(inner)), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::string& value) override { inner_->set(prefix_ + key, value); }
  std::string get(const std::string& key, std::chrono::milliseconds timeout) override {
    return inner_->get(prefix_ + key, timeout);
  }
  int64_t add(const std::string& key, int64_t delta) override { return inner_->add(prefix_ + key, delta); }

 private:
  std::shared_ptr<Store> inner_;
  std::string prefix_;
};

class HierarchicalBackend final : public Backend {
 public:
  explicit HierarchicalBackend(const BackendContext& context) : world_(context.world_size), rank_(context.rank) {
    if (context.node_ids.size() != static_cast<size_t>(world_))
      throw CollectiveError("hierarchical group '" + context.group + "': needs the node of every rank");
    // Nodes in order of their lowest rank; a node's leader is its lowest rank.
    std::map<std::string, int> node_index;
    for (int r = 0; r < world_; ++r) {
      auto [it, added] = node_index.emplace(context.node_ids[static_cast<size_t>(r)], static_cast<int>(leaders_.size()));
      if (added) leaders_.push_back(r);
      node_of_.push_back(it->second);
    }
    my_node_ = node_of_[static_cast<size_t>(rank_)];
    for (int r = 0; r < world_; ++r)
      if (node_of_[static_cast<size_t>(r)] == my_node_) local_ranks_.push_back(r);
    local_rank_ = static_cast<int>(std::find(local_ranks_.begin(), local_ranks_.end(), rank_) - local_ranks_.begin());

    BackendContext local = context;
    local.group = context.group + "/node" + std::to_string(my_node_);
    local.rank = local_rank_;
    local.world_size = static_cast<int>(local_ranks_.size());
    local.store = std::make_shared<PrefixStore>(context.store, "node" + std::to_string(my_node_) + "/");
    local.node_ids.clear();
    local.node_ips.clear();
    for (int r : local_ranks_) {
      local.node_ids.push_back(context.node_ids[static_cast<size_t>(r)]);
      if (static_cast<size_t>(r) < context.node_ips.size()) local.node_ips.push_back(context.node_ips[static_cast<size_t>(r)]);
    }
    local_ = make_shm_backend(local);
    if (is_leader()) {
      BackendContext leaders = context;
      leaders.group = context.group + "/leaders";
      leaders.rank = my_node_;
      leaders.world_size = static_cast<int>(leaders_.size());
      leaders.store = std::make_shared<PrefixStore>(context.store, "leaders/");
      leaders.node_ids.clear();
      leaders.node_ips.clear();
      for (int r : leaders_) {
        leaders.node_ids.push_back(context.node_ids[static_cast<size_t>(r)]);
        if (static_cast<size_t>(r) < context.node_ips.size())
          leaders.node_ips.push_back(context.node_ips[static_cast<size_t>(r)]);
      }
      leaders_backend_ = make_tcp_backend(leaders);
    }
    BackendContext all = context;
    all.group = context.group + "/all";
    all.store = std::make_shared<PrefixStore>(context.store, "all/");
    all_ = make_tcp_backend(all);
  }

  BackendKind kind() const override { return BackendKind::kHierarchical; }

  void allreduce(void* data, size_t count, DataType type, ReduceOp op) override {
    // Sums travel as sums; an average divides once at the end.
    ReduceOp step = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
    local_->reduce(data, count, type, step, 0);
    if (is_leader()) leaders_backend_->allreduce(data, count, type, step);
    local_->broadcast(data, count, type, 0);
    if (op == ReduceOp::kAvg) divide(data, count, type, world_);
  }

  void broadcast(void* data, size_t count, DataType type, int root) override {
    int root_node = node_of_[static_cast<size_t>(root)];
    if (my_node_ == root_node && root != leaders_[static_cast<size_t>(root_node)]) {
      int root_local = static_cast<int>(std::find(local_ranks_.begin(), local_ranks_.end(), root) - local_ranks_.begin());
      local_->broadcast(data, count, type, root_local);
    }
    if (is_leader()) leaders_backend_->broadcast(data, count, type, root_node);
    local_->broadcast(data, count, type, 0);
  }

  void reduce(void* data, size_t count, DataType type, ReduceOp op, int root) override {
    if (rank_ == root) {
      allreduce(data, count, type, op);
      return;
    }
    std::vector<uint8_t> scratch(count * element_size(type));
    if (!scratch.empty()) std::memcpy(scratch.data(), data, scratch.size());
    allreduce(scratch.data(), count, type, op);
  }

  void barrier() override {
    local_->barrier();
    if (is_leader()) leaders_backend_->barrier();
    local_->barrier();
  }

  void allgather(const void* send, void* recv, size_t count, DataType type) override {
    all_->allgather(send, recv, count, type);
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DataType type, ReduceOp op) override {
    all_->reduce_scatter(send, recv, count, type, op);
  }
  void send(const void* data, size_t count, DataType type, int to) override { all_->send(data, count, type, to); }
  void recv(void* data, size_t count, DataType type, int from) override { all_->recv(data, count, type, from); }

  void abort(const std::string& why) override {
    local_->abort(why);
    if (leaders_backend_) leaders_backend_->abort(why);
    all_->abort(why);
  }

 private:
  bool is_leader() const { return local_rank_ == 0; }

  int world_;
  int rank_;
  std::vector<int> leaders_;  // per node (in order of first rank), its leader's rank
  std::vector<int> node_of_;  // per rank, its node's index
  int my_node_ = 0;
  std::vector<int> local_ranks_;  // ranks on this node, ascending
  int local_rank_ = 0;
  std::unique_ptr<Backend> local_;
  std::unique_ptr<Backend> leaders_backend_;  // leaders only
  std::unique_ptr<Backend> all_;
};

}  // namespace

std::unique_ptr<Backend> make_hierarchical_backend(const BackendContext& context) {
  return std::make_unique<HierarchicalBackend>(context);
}

}  // namespace gantry::collective::detail
