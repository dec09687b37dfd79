#include "gantry/train/ddp.h"

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "gantry/errors.h"

namespace gantry::train {
namespace detail {

std::vector<std::vector<size_t>> assign_buckets(const std::vector<BucketParam>& params, size_t cap_bytes,
                                                size_t first_cap_bytes) {
  std::vector<std::vector<size_t>> buckets;
  size_t bytes = 0;
  int kind = 0;
  for (size_t k = params.size(); k-- > 0;) {
    const BucketParam& p = params[k];
    // While the first bucket fills, its smaller cap applies.
    size_t cap = buckets.size() <= 1 ? first_cap_bytes : cap_bytes;
    bool open = !buckets.empty() && kind == p.kind && bytes + p.bytes <= cap;
    if (!open) {
      buckets.emplace_back();
      bytes = 0;
      kind = p.kind;
    }
    buckets.back().push_back(k);
    bytes += p.bytes;
  }
  return buckets;
}

}  // namespace detail

namespace {

collective::DataType collective_type(const torch::Tensor& t, const std::string& what) {
  switch (t.scalar_type()) {
    case torch::kFloat: return collective::DataType::kFloat32;
    case torch::kDouble: return collective::DataType::kFloat64;
    case torch::kHalf: return collective::DataType::kFloat16;
    case torch::kBFloat16: return collective::DataType::kBFloat16;
    case torch::kInt: return collective::DataType::kInt32;
    case torch::kLong: return collective::DataType::kInt64;
    case torch::kByte:
    case torch::kBool: return collective::DataType::kUInt8;
    default:
      throw Error("gantry::train::DistributedDataParallel cannot synchronise " + what + " of type " +
                  std::string(c10::toString(t.scalar_type())));
  }
}

// A key that separates tensors that cannot share one flat buffer.
int kind_of(const torch::Tensor& t) {
  return static_cast<int>(t.scalar_type()) * 1024 + (t.is_cuda() ? 1 + t.get_device() : 0);
}

void synchronize_device(const torch::Tensor& t) {
  // Collectives on device memory run on the communicator's own stream: work queued on
  // the tensor's stream must be finished first.
  if (t.is_cuda()) torch::cuda::synchronize(t.get_device());
}

// Broadcasts `tensors` from rank 0, one flat buffer per kind.
void broadcast_coalesced(collective::Communicator& comm, const std::vector<torch::Tensor>& tensors,
                         const std::string& what) {
  std::map<int, std::vector<torch::Tensor>> by_kind;
  for (const auto& t : tensors)
    if (t.defined() && t.numel() > 0) by_kind[kind_of(t)].push_back(t);
  torch::NoGradGuard no_grad;
  for (auto& [kind, group] : by_kind) {
    std::vector<torch::Tensor> flat_parts;
    flat_parts.reserve(group.size());
    for (const auto& t : group) flat_parts.push_back(t.detach().reshape({-1}));
    torch::Tensor flat = torch::cat(flat_parts).contiguous();
    synchronize_device(flat);
    comm.broadcast(flat.data_ptr(), static_cast<size_t>(flat.numel()), collective_type(flat, what), 0);
    int64_t offset = 0;
    for (auto& t : group) {
      t.detach().copy_(flat.narrow(0, offset, t.numel()).view_as(t));
      offset += t.numel();
    }
  }
}

}  // namespace

// Runs after a parameter's gradient accumulator has added this backward's gradient to
// `.grad`: the point where the whole (accumulated) gradient is known.
class AccumulatedHook final : public torch::autograd::FunctionPostHook {
 public:
  AccumulatedHook(std::function<void()> ready) : ready_(std::move(ready)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    ready_();
    return outputs;
  }

 private:
  std::function<void()> ready_;
};

struct DistributedDataParallel::Impl {
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;
    // `.grad` as this parameter's part of its bucket's buffer: the gradient accumulator
    // adds into it in place, so gradients are never copied in or out. An alias, not an
    // autograd view, so that optimizers may detach_() and zero_() it.
    torch::Tensor alias;
  };
  struct Bucket {
    std::vector<size_t> params;
    torch::Tensor flat;
    collective::DataType type = collective::DataType::kFloat32;
    size_t pending = 0;
    collective::Work work;
  };

  collective::Communicator* comm = nullptr;  // not owned
  DdpOptions options;
  std::vector<torch::Tensor> params;
  std::vector<std::string> names;
  std::vector<torch::Tensor> buffers;
  std::vector<Slot> slots;
  std::vector<Bucket> buckets;
  // Held so that each parameter keeps the accumulator (and so the hook) it has now.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::vector<uintptr_t> hooks;
  std::vector<unsigned> tensor_hooks;

  std::mutex mu;  // guards the per-backward state below (hooks may run on device threads)
  bool require_sync = true;
  bool in_backward = false;
  std::vector<bool> seen;   // its tensor hook ran in this backward
  std::vector<bool> late;   // its gradient arrives without our post hook (see before_gradient)
  std::vector<bool> ready;
  size_t next_launch = 0;
  Stats stats;

  // Makes `.grad` of parameter `i` its bucket alias again if something replaced it (an
  // optimizer's zero_grad(set_to_none), the accumulator stealing a fresh gradient),
  // keeping its value; an undefined gradient becomes zeros.
  void bind_gradient(size_t i) {
    Slot& s = slots[i];
    torch::Tensor& grad = params[i].mutable_grad();
    if (grad.defined() && grad.data_ptr() == s.alias.data_ptr()) return;
    torch::NoGradGuard no_grad;
    if (grad.defined()) {
      s.alias.copy_(grad);
    } else {
      s.alias.zero_();
    }
    grad = s.alias;
  }

  // Hooks the accumulator parameter `i` has now; returns false when it was hooked already.
  bool hook_accumulator(size_t i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(params[i]);
    if (accumulator == nullptr) throw Error("parameter " + names[i] + " has no gradient accumulator (not a leaf?)");
    if (i < accumulators.size() && accumulators[i] == accumulator) return false;
    uintptr_t key = accumulator->add_post_hook(std::make_unique<AccumulatedHook>([this, i] { on_gradient(i); }));
    if (i < accumulators.size()) {
      accumulators[i]->del_post_hook(hooks[i]);
      accumulators[i] = std::move(accumulator);
      hooks[i] = key;
    } else {
      accumulators.push_back(std::move(accumulator));
      hooks.push_back(key);
    }
    return true;
  }

  // The tensor hook: runs just before parameter `i`'s accumulator, once per backward. It
  // starts a backward's bookkeeping. Replacing a parameter's storage (LibTorch's
  // Module::load uses set_) gives it a new accumulator without our post hook, and a hook
  // added now would not run in this backward: the parameter is then marked late, and
  // counted at the end of backward, once its gradient is accumulated.
  void before_gradient(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!require_sync) return;
    if (!in_backward || seen[i]) start_backward();
    seen[i] = true;
    if (hook_accumulator(i)) late[i] = true;
  }

  // The accumulator's post hook: `.grad` now holds this backward's (accumulated) gradient.
  void on_gradient(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!require_sync || !in_backward || ready[i]) return;
    bind_gradient(i);
    mark_ready(i);
  }

  void start_backward() {
    in_backward = true;
    std::fill(ready.begin(), ready.end(), false);
    std::fill(seen.begin(), seen.end(), false);
    std::fill(late.begin(), late.end(), false);
    for (auto& b : buckets) b.pending = b.params.size();
    next_launch = 0;
    torch::autograd::Engine::get_default_engine().queue_callback([this] { end_backward(); });
  }

  void mark_ready(size_t i) {
    ready[i] = true;
    --buckets[slots[i].bucket].pending;
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
      Bucket& b = buckets[next_launch++];
      synchronize_device(b.flat);
      b.work = comm->allreduce_async(b.flat.data_ptr(), static_cast<size_t>(b.flat.numel()), b.type,
                                     collective::ReduceOp::kAvg);
    }
  }

  void end_backward() {
    std::unique_lock<std::mutex> lock(mu);
    if (!in_backward) return;
    std::string unused;
    for (size_t i = 0; i < params.size(); ++i) {
      if (ready[i]) continue;
      // No gradient reached this parameter in this backward (unless it was late): it
      // contributes its accumulated gradient (or zero), so that every rank still reduces
      // the same buckets.
      if (!late[i] && unused.size() < 400) unused += (unused.empty() ? "" : ", ") + names[i];
      bind_gradient(i);
      mark_ready(i);
    }
    auto waiting = std::chrono::steady_clock::now();
    for (auto& b : buckets) b.work.wait();
    stats.exposed_sync_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - waiting).count();
    // The averages are in the buckets, which are the gradients.
    in_backward = false;
    ++stats.synced_backwards;
    lock.unlock();
    if (options.broadcast_buffers && !buffers.empty()) broadcast_coalesced(*comm, buffers, "a buffer");
    if (!unused.empty() && !options.find_unused_parameters) {
      throw Error("parameters got no gradient in this backward pass: " + unused +
                  ". If the model skips them on purpose, prepare it with {.find_unused_parameters = true}");
    }
  }
};

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<torch::nn::Module> module,
                                                 collective::Communicator& comm, DdpOptions options)
    : module_(std::move(module)), impl_(std::make_unique<Impl>()) {
  if (module_ == nullptr) throw Error("gantry::train::DistributedDataParallel needs a module");
  if (!(options.bucket_cap_mb > 0)) throw Error("DdpOptions::bucket_cap_mb must be positive");
  Impl& m = *impl_;
  m.comm = &comm;
  m.options = options;
  for (const auto& item : module_->named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    m.names.push_back(item.key());
    m.params.push_back(item.value());
  }
  for (const auto& b : module_->buffers(/*recurse=*/true)) m.buffers.push_back(b);

  // Every rank starts from rank 0's state.
  std::vector<torch::Tensor> state = m.params;
  state.insert(state.end(), m.buffers.begin(), m.buffers.end());
  broadcast_coalesced(comm, state, "a parameter");

  std::vector<detail::BucketParam> shapes;
  for (const auto& p : m.params) {
    shapes.push_back({static_cast<size_t>(p.numel()) * p.element_size(), kind_of(p)});
    collective_type(p, "parameter");
  }
  auto cap = static_cast<size_t>(options.bucket_cap_mb * 1024 * 1024);
  auto layout = detail::assign_buckets(shapes, cap, std::min<size_t>(cap, 1u << 20));
  m.slots.resize(m.params.size());
  for (size_t k = 0; k < layout.size(); ++k) {
    Impl::Bucket b;
    b.params = layout[k];
    int64_t numel = 0;
    for (size_t i : b.params) {
      m.slots[i] = {k, numel};
      numel += m.params[i].numel();
    }
    const torch::Tensor& first = m.params[b.params.front()];
    b.flat = torch::zeros({numel}, first.options().requires_grad(false));
    b.type = collective_type(first, "parameter " + m.names[b.params.front()]);
    m.stats.bucket_bytes.push_back(static_cast<size_t>(numel) * first.element_size());
    m.buckets.push_back(std::move(b));
  }
  m.ready.assign(m.params.size(), false);
  m.seen.assign(m.params.size(), false);
  m.late.assign(m.params.size(), false);
  Impl* impl = impl_.get();
  for (size_t i = 0; i < m.params.size(); ++i) {
    Impl::Slot& s = m.slots[i];
    torch::Tensor flat = m.buckets[s.bucket].flat;
    auto* base = static_cast<char*>(flat.data_ptr()) + s.offset * static_cast<int64_t>(flat.element_size());
    s.alias = torch::from_blob(base, m.params[i].sizes(), [flat](void*) {}, flat.options());
    if (torch::Tensor existing = m.params[i].grad(); existing.defined()) {
      torch::NoGradGuard no_grad;
      s.alias.copy_(existing);
    }
    m.params[i].mutable_grad() = s.alias;
    m.hook_accumulator(i);
    m.tensor_hooks.push_back(m.params[i].register_hook([impl, i](const torch::Tensor&) { impl->before_gradient(i); }));
  }
}

DistributedDataParallel::~DistributedDataParallel() {
  for (size_t i = 0; i < impl_->accumulators.size(); ++i) {
    impl_->accumulators[i]->del_post_hook(impl_->hooks[i]);
    impl_->params[i].remove_hook(impl_->tensor_hooks[i]);
  }
}

DistributedDataParallel::NoSyncGuard::NoSyncGuard(DistributedDataParallel* ddp) : ddp_(ddp) {
  std::lock_guard<std::mutex> lock(ddp_->impl_->mu);
  previous_ = ddp_->impl_->require_sync;
  ddp_->impl_->require_sync = false;
}

DistributedDataParallel::NoSyncGuard::~NoSyncGuard() {
  std::lock_guard<std::mutex> lock(ddp_->impl_->mu);
  ddp_->impl_->require_sync = previous_;
}

DistributedDataParallel::Stats DistributedDataParallel::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

std::vector<std::vector<size_t>> DistributedDataParallel::buckets() const {
  std::vector<std::vector<size_t>> out;
  for (const auto& b : impl_->buckets) out.push_back(b.params);
  return out;
}

}  // namespace gantry::train
