#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "gantry/codec.h"
#include "gantry/detail/runtime.h"
#include "gantry/ids.h"

namespace gantry {

/// A typed, reference-counted handle to a value that exists (or will) somewhere in the
/// cluster. Copies share one control block; when the last copy anywhere in the cluster is
/// gone, the object is freed. Cheap to copy and to pass to tasks.
///
///     gantry::ObjectRef<int64_t> r = gantry::task(fibonacci).remote(30);
///     int64_t v = r.get();
template <typename T>
class ObjectRef {
 public:
  using value_type = T;

  /// An empty reference; `get()` on it throws.
  ObjectRef() = default;
  /// Wraps a control block (used by the runtime and the codec).
  explicit ObjectRef(std::shared_ptr<detail::RefState> state) : state_(std::move(state)) {}

  /// Blocks until the value is ready and returns it; rethrows a remote error
  /// (TaskError, WorkerCrashedError, ActorDiedError, ...).
  T get() const { return fetch(std::nullopt); }
  /// As `get()`, but throws GetTimeoutError when not ready within `timeout`.
  template <typename Rep, typename Period>
  T get(std::chrono::duration<Rep, Period> timeout) const {
    return fetch(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
  }

  /// Whether the value (or its error) is ready, so `get()` would not block. Never blocks;
  /// for a reference this process borrows, asks the owner.
  bool is_ready() const {
    return detail::runtime().wait({{state().id(), state().owner()}}, 1, std::chrono::milliseconds(0))[0];
  }

  const ObjectId& id() const { return state().id(); }
  /// Address of the process that owns the object.
  const std::string& owner() const { return state().owner(); }
  bool valid() const { return state_ != nullptr; }
  const std::shared_ptr<detail::RefState>& ref_state() const { return state_; }

 private:
  const detail::RefState& state() const {
    if (!state_) throw Error("use of an empty gantry::ObjectRef");
    return *state_;
  }
  T fetch(std::optional<std::chrono::milliseconds> timeout) const {
    auto buffer = detail::runtime().get(state().id(), state().owner(), timeout);
    if constexpr (std::is_void_v<T>) {
      return;
    } else {
      if (!buffer->copy_on_write()) return decode_from<T>(buffer->data(), buffer->size());
      // A codec may alias these bytes past this call (DecodeSource): the handle holds the
      // mapping, and a reference so that the store cannot reuse the object's file.
      struct Retained {
        std::shared_ptr<detail::Buffer> buffer;
        std::shared_ptr<detail::RefState> ref;
      };
      DecodeSource source(buffer->data(), buffer->size(), std::make_shared<Retained>(Retained{buffer, state_}));
      return decode_from<T>(buffer->data(), buffer->size());
    }
  }

  std::shared_ptr<detail::RefState> state_;
};

namespace detail {
template <typename T>
struct IsObjectRef : std::false_type {};
template <typename T>
struct IsObjectRef<ObjectRef<T>> : std::true_type {};

/// Encodes the reference itself: [id bytes, owner address] in an ext.
void encode_ref(Writer& w, const ObjectId& id, const std::string& owner);
/// Decodes a reference and counts it as a new local reference in this process.
std::shared_ptr<RefState> decode_ref(Reader& r);
}  // namespace detail

/// An `ObjectRef` nested inside a value (a vector of refs, a struct member) travels as a
/// reference; the receiver borrows it from its owner.
template <typename T>
struct Codec<ObjectRef<T>> {
  static void encode(Writer& w, const ObjectRef<T>& ref) {
    if (!ref.valid()) throw Error("cannot send an empty gantry::ObjectRef");
    detail::NestedRefCollector::note(ref.ref_state());
    detail::encode_ref(w, ref.id(), ref.owner());
  }
  static void decode(Reader& r, ObjectRef<T>& ref) { ref = ObjectRef<T>(detail::decode_ref(r)); }
};

}  // namespace gantry
