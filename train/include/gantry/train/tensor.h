#pragma once

/// Tensors as gantry values. Include this header (it pulls in LibTorch) and
/// `torch::Tensor`, `std::vector<torch::Tensor>` and `gantry::train::StateDict` travel like
/// any other value: `gantry::put(tensor)`, task and actor-call arguments, return values.
///
///     torch::Tensor scale(torch::Tensor t, double f) { return t * f; }
///     GANTRY_REMOTE(scale);
///     ...
///     auto weights = gantry::put(torch::randn({4096, 4096}));   // 64 MiB, written once
///     torch::Tensor doubled = gantry::task(scale).remote(weights, 2.0).get();
///
/// What a tensor keeps: dtype (any but the quantized ones, bool, half and bfloat16
/// included), shape (0-d and empty too), `requires_grad`, and its values as one block of
/// raw little-endian bytes, copied with one memcpy: no per-element work. A non-contiguous
/// tensor (a transpose, a strided slice) or a lazily conjugated or negated view arrives
/// contiguous and resolved. An undefined `torch::Tensor()` is MessagePack nil. Sparse,
/// quantized and meta tensors are refused with gantry::Error.
///
/// Devices: a CUDA tensor is copied to the CPU to be encoded and its device recorded. The
/// reader puts it back on *its current* CUDA device when CUDA is available there (device
/// indices differ between processes: a worker sees only the GPUs it was given), and
/// otherwise returns it on the CPU, so a CPU-only driver can read a GPU worker's results.
/// Tensors of other devices are copied to the CPU and stay there.
///
/// Reads without a copy: `ObjectRef::get` of an object in this node's shared-memory store
/// returns tensors of 64 KiB and more that *alias the mapped object* (torch::from_blob over
/// the mapping) instead of copying it. Each such tensor holds the mapping and a reference to
/// the object, so the object stays in the store, unchanged, until the last tensor sharing
/// those bytes is gone. The mapping is copy-on-write: writing to such a tensor is allowed
/// and copies just the pages written, privately; no other reader, and not the object, sees
/// the write. Task and actor-call arguments are copied (once, with memcpy), since the
/// worker holds no reference to them once the call returns; to read a large argument
/// without a copy, take an `ObjectRef<torch::Tensor>` parameter and `get()` it.
///
/// Wire format (MessagePack): nil, or an array of six fields
///     [dtype name ("float32", "bfloat16", ...), [sizes...], device ("cpu", "cuda:1"),
///      requires_grad, padding (bin, zeros), data (bin, or an array of bins over 4 GiB)]
/// where the padding puts the data at a multiple of 64 bytes from the start of the encoded
/// object, so that a mapped object can be aliased with the alignment LibTorch expects.

#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "gantry/gantry.h"

namespace gantry::train {

/// A module's state: named tensors in order (what PyTorch calls a state dict). Names are
/// distinct. A gantry value (a MessagePack map of name to tensor), so a task can take and
/// return one. Not thread-safe for writes.
///
///     auto state = gantry::put(gantry::train::state_dict(*model));
///     gantry::train::load_state_dict(*other_model, state.get());
class StateDict {
 public:
  using Entry = std::pair<std::string, torch::Tensor>;
  using const_iterator = std::vector<Entry>::const_iterator;

  StateDict() = default;
  /// Throws gantry::Error when a name repeats.
  StateDict(std::initializer_list<Entry> entries) {
    for (const auto& [name, tensor] : entries) insert(name, tensor);
  }

  /// Adds `tensor` (sharing its storage) under `name`, after the others; throws
  /// gantry::Error when the name is taken.
  void insert(std::string name, torch::Tensor tensor) {
    if (find(name) != nullptr) throw Error("StateDict already has a tensor named '" + name + "'");
    entries_.emplace_back(std::move(name), std::move(tensor));
  }
  /// The tensor called `name`, or null. Linear in size().
  const torch::Tensor* find(std::string_view name) const {
    for (const auto& [n, t] : entries_)
      if (n == name) return &t;
    return nullptr;
  }
  /// The tensor called `name`; throws gantry::Error naming it when there is none.
  const torch::Tensor& at(std::string_view name) const {
    const torch::Tensor* t = find(name);
    if (t == nullptr) throw Error("StateDict has no tensor named '" + std::string(name) + "'");
    return *t;
  }
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  const_iterator begin() const { return entries_.begin(); }
  const_iterator end() const { return entries_.end(); }
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  std::vector<Entry> entries_;
};

/// The parameters, then the buffers, of `module` and its submodules, under their dotted
/// names ("encoder.0.weight"), detached. Like PyTorch's, the tensors share storage with the
/// module: a later optimizer step changes them. Encoding (put, returning it from a task)
/// copies the values as they are at that moment.
inline StateDict state_dict(const torch::nn::Module& module) {
  StateDict state;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) state.insert(item.key(), item.value().detach());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) state.insert(item.key(), item.value().detach());
  return state;
}

/// Copies `state` into the parameters and buffers of `module` (under torch::NoGradGuard,
/// converting dtype and device as `copy_` does). The names must match exactly and the
/// shapes too; otherwise throws gantry::Error naming every missing, unexpected and
/// mismatched entry, and changes nothing.
inline void load_state_dict(torch::nn::Module& module, const StateDict& state) {
  std::vector<std::pair<std::string, torch::Tensor>> targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    if (item.value().defined()) targets.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    if (item.value().defined()) targets.emplace_back(item.key(), item.value());

  std::unordered_map<std::string_view, const torch::Tensor*> sources;
  for (const auto& [name, tensor] : state) sources.emplace(name, &tensor);
  auto shape_text = [](c10::IntArrayRef sizes) {
    std::ostringstream out;
    out << sizes;
    return out.str();
  };
  std::vector<std::string> problems;
  std::unordered_set<std::string_view> wanted;
  for (const auto& [name, target] : targets) {
    wanted.insert(name);
    auto it = sources.find(name);
    if (it == sources.end()) {
      problems.push_back("missing '" + name + "'");
    } else if (!it->second->defined()) {
      problems.push_back("'" + name + "' is an undefined tensor");
    } else if (it->second->sizes() != target.sizes()) {
      problems.push_back("'" + name + "' has shape " + shape_text(it->second->sizes()) + " where the module has " +
                         shape_text(target.sizes()));
    }
  }
  for (const auto& [name, tensor] : state)
    if (!wanted.count(name)) problems.push_back("unexpected '" + name + "'");
  if (!problems.empty()) {
    std::string text;
    constexpr size_t kShown = 8;
    for (size_t i = 0; i < problems.size() && i < kShown; ++i) text += (i ? "; " : "") + problems[i];
    if (problems.size() > kShown) text += "; and " + std::to_string(problems.size() - kShown) + " more";
    throw Error("load_state_dict: the state does not fit the module " + module.name() + ": " + text +
                " (nothing was loaded)");
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) target.copy_(*sources.at(name));
}

namespace detail {

static_assert(std::endian::native == std::endian::little,
              "tensors travel as raw little-endian bytes; a big-endian host would need a byte swap");

inline constexpr size_t kTensorFields = 6;
/// The data starts this many bytes into the encoded object (mod this), at least.
inline constexpr size_t kTensorDataAlignment = 64;
/// Smaller tensors are copied even when they could alias: a few pages are cheap to copy
/// and need not hold the object in the store.
inline constexpr size_t kTensorAliasMinBytes = size_t{64} << 10;
/// MessagePack bins stop at 4 GiB - 1; larger data goes as an array of bins this big.
inline constexpr size_t kTensorChunkBytes = size_t{1} << 30;
inline constexpr size_t kTensorMaxDims = 64;

struct DtypeName {
  c10::ScalarType type;
  std::string_view name;
};

// Stable names (PyTorch's), not c10::ScalarType numbers, which may change between versions.
inline constexpr DtypeName kTensorDtypes[] = {
    {at::kBool, "bool"},
    {at::kByte, "uint8"},
    {at::kChar, "int8"},
    {at::kShort, "int16"},
    {at::kInt, "int32"},
    {at::kLong, "int64"},
    {at::kHalf, "float16"},
    {at::kBFloat16, "bfloat16"},
    {at::kFloat, "float32"},
    {at::kDouble, "float64"},
    {at::kComplexHalf, "complex32"},
    {at::kComplexFloat, "complex64"},
    {at::kComplexDouble, "complex128"},
};

inline std::string_view dtype_name(c10::ScalarType type) {
  for (const auto& d : kTensorDtypes)
    if (d.type == type) return d.name;
  throw Error(std::string("gantry cannot send a tensor of dtype ") + c10::toString(type) +
              " (quantized dtypes are not supported)");
}

inline std::optional<c10::ScalarType> dtype_named(std::string_view name) {
  for (const auto& d : kTensorDtypes)
    if (d.name == name) return d.type;
  return std::nullopt;
}

inline bool is_array_tag(uint8_t tag) { return (tag & 0xf0) == 0x90 || tag == 0xdc || tag == 0xdd; }

inline size_t bin_header_bytes(size_t n) { return n < 256 ? 2 : n < 65536 ? 3 : 5; }

/// Writes the padding and data fields. `data` is read only when `w` is not counting.
inline void write_tensor_data(Writer& w, const uint8_t* data, size_t nbytes) {
  static constexpr uint8_t kZeros[kTensorDataAlignment] = {};
  if (nbytes <= 0xffffffffu) {
    // Positions count from the start of the encoded object, which the store maps at a
    // page boundary: data at a multiple of 64 from there is 64-byte aligned in memory.
    size_t data_at = w.size() + bin_header_bytes(0) + bin_header_bytes(nbytes);
    size_t pad = (kTensorDataAlignment - data_at % kTensorDataAlignment) % kTensorDataAlignment;
    w.bin(kZeros, pad);
    w.bin(data, nbytes);
    return;
  }
  w.bin(kZeros, 0);
  w.array((nbytes + kTensorChunkBytes - 1) / kTensorChunkBytes);
  for (size_t offset = 0; offset < nbytes; offset += kTensorChunkBytes)
    w.bin(data == nullptr ? nullptr : data + offset, std::min(kTensorChunkBytes, nbytes - offset));
}

/// A CPU tensor over `chunks` (their concatenation is `nbytes` of raw elements): aliasing
/// them when the thread's DecodeSource allows it, else copied.
inline torch::Tensor tensor_from_chunks(const std::vector<std::string_view>& chunks, const std::vector<int64_t>& sizes,
                                        c10::ScalarType dtype, size_t nbytes) {
  auto options = torch::TensorOptions().dtype(dtype);
  if (chunks.size() == 1 && nbytes >= kTensorAliasMinBytes) {
    const char* p = chunks.front().data();
    if (reinterpret_cast<uintptr_t>(p) % kTensorDataAlignment == 0) {
      if (std::shared_ptr<void> keep = DecodeSource::retain(p, nbytes)) {
        // The deleter owns the handle: the mapping and the object's reference go with the
        // storage's last user. The mapping is copy-on-write, so the tensor may be written.
        return torch::from_blob(
            const_cast<char*>(p), sizes, [keep = std::move(keep)](void*) { (void)keep; }, options);
      }
    }
  }
  torch::Tensor t = torch::empty(sizes, options);
  auto* out = static_cast<uint8_t*>(t.data_ptr());
  for (std::string_view c : chunks) {
    if (!c.empty()) std::memcpy(out, c.data(), c.size());
    out += c.size();
  }
  return t;
}

}  // namespace detail
}  // namespace gantry::train

namespace gantry {

/// `torch::Tensor` as a gantry value; see gantry/train/tensor.h's header comment.
template <>
struct Codec<torch::Tensor> {
  static void encode(Writer& w, const torch::Tensor& tensor) {
    namespace d = train::detail;
    if (!tensor.defined()) return w.nil();
    if (tensor.layout() != torch::kStrided)
      throw Error("gantry can send only dense (strided) tensors; call to_dense() on a sparse one");
    if (tensor.is_meta()) throw Error("gantry cannot send a meta tensor: it has no values");
    if (tensor.is_quantized()) throw Error("gantry cannot send a quantized tensor; dequantize() it first");
    std::string_view dtype = d::dtype_name(tensor.scalar_type());
    const size_t nbytes = static_cast<size_t>(tensor.numel()) * tensor.element_size();
    w.array(d::kTensorFields);
    w.str(dtype);
    w.array(static_cast<size_t>(tensor.dim()));
    for (int64_t size : tensor.sizes()) w.sint(size);
    w.str(tensor.device().str());
    w.boolean(tensor.requires_grad());
    // The bytes are produced only for the writing pass; each step returns its input when
    // there is nothing to do (a contiguous CPU tensor is not copied here).
    torch::Tensor bytes;
    const uint8_t* data = nullptr;
    if (!w.counting() && nbytes > 0) {
      bytes = tensor.detach().to(torch::kCPU).resolve_conj().resolve_neg().contiguous();
      data = static_cast<const uint8_t*>(bytes.data_ptr());
    }
    d::write_tensor_data(w, data, nbytes);
  }

  static void decode(Reader& r, torch::Tensor& out) {
    namespace d = train::detail;
    if (r.next_is_nil()) {
      r.nil();
      out = torch::Tensor();
      return;
    }
    if (r.array() != d::kTensorFields) r.fail("tensor (an array of 6 fields)");
    std::string_view name = r.str();
    std::optional<c10::ScalarType> dtype = d::dtype_named(name);
    if (!dtype) r.fail("a known tensor dtype name, not '" + std::string(name.substr(0, 32)) + "'");
    const size_t ndim = r.array();
    if (ndim > d::kTensorMaxDims) r.fail("a tensor of at most 64 dimensions");
    std::vector<int64_t> sizes(ndim);
    uint64_t numel = 1;
    for (int64_t& size : sizes) {
      size = r.sint();
      if (size < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(size), &numel))
        r.fail("tensor sizes that are not negative and whose product fits in 64 bits");
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, c10::elementSize(*dtype), &nbytes)) r.fail("a tensor size in bytes below 2^64");
    std::string device_text(r.str());
    std::optional<torch::Device> device;
    try {
      device.emplace(device_text);
    } catch (const std::exception&) {
      r.fail("a device name, not '" + device_text.substr(0, 32) + "'");
    }
    const bool requires_grad = r.boolean();
    if (requires_grad && !c10::isFloatingType(*dtype) && !c10::isComplexType(*dtype))
      r.fail("requires_grad false for a tensor of integer or bool dtype");
    r.bin();  // padding
    std::vector<std::string_view> chunks;
    if (d::is_array_tag(r.peek())) {
      const size_t n = r.array();
      for (size_t i = 0; i < n; ++i) chunks.push_back(r.bin());
    } else {
      chunks.push_back(r.bin());
    }
    uint64_t total = 0;
    for (std::string_view c : chunks) total += c.size();
    if (total != nbytes) r.fail(std::to_string(nbytes) + " bytes of tensor data (got " + std::to_string(total) + ")");

    torch::Tensor t = d::tensor_from_chunks(chunks, sizes, *dtype, static_cast<size_t>(nbytes));
    if (device->is_cuda() && torch::cuda::is_available()) t = t.to(torch::Device(torch::kCUDA));
    if (requires_grad) t.set_requires_grad(true);
    out = std::move(t);
  }
};

/// A StateDict is a MessagePack map of name to tensor, in order.
template <>
struct Codec<train::StateDict> {
  static void encode(Writer& w, const train::StateDict& state) {
    w.map(state.size());
    for (const auto& [name, tensor] : state) {
      w.str(name);
      Codec<torch::Tensor>::encode(w, tensor);
    }
  }
  static void decode(Reader& r, train::StateDict& state) {
    const size_t n = r.map();
    train::StateDict out;
    std::unordered_set<std::string_view> seen;
    for (size_t i = 0; i < n; ++i) {
      std::string_view name = r.str();
      if (!seen.insert(name).second) r.fail("distinct tensor names ('" + std::string(name) + "' repeats)");
      torch::Tensor tensor;
      Codec<torch::Tensor>::decode(r, tensor);
      out.insert(std::string(name), std::move(tensor));
    }
    state = std::move(out);
  }
};

}  // namespace gantry
