#pragma once

// The boundary between the header-only API templates and the compiled runtime. Only
// standard types cross it, so user code never sees gRPC or protobuf headers.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gantry/ids.h"
#include "gantry/options.h"

namespace gantry::detail {

/// Read-only bytes of an object, kept alive (inline copy or shared-memory mapping) for as
/// long as the Buffer lives.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual const uint8_t* data() const = 0;
  virtual size_t size() const = 0;
  /// True when the bytes are a copy-on-write mapping of their own: this process may write
  /// through them without changing the object or what any other reader sees.
  virtual bool copy_on_write() const { return false; }
};

/// A shared-memory object being written by its creator; `seal()` publishes it.
class WritableObject {
 public:
  virtual ~WritableObject() = default;
  virtual uint8_t* data() = 0;
  virtual size_t size() const = 0;
};

/// Reference-count control block shared by every copy of one `ObjectRef`. Creating one
/// counts a local reference in the runtime; destroying the last copy releases it.
class RefState {
 public:
  /// Counts a new local reference (and registers as a borrower when `owner` is remote).
  RefState(ObjectId id, std::string owner);
  /// Takes over a reference the runtime already counted (from submit or put).
  struct Adopt {};
  RefState(ObjectId id, std::string owner, Adopt) : id_(id), owner_(std::move(owner)) {}
  ~RefState();
  RefState(const RefState&) = delete;
  RefState& operator=(const RefState&) = delete;

  const ObjectId& id() const { return id_; }
  const std::string& owner() const { return owner_; }

 private:
  ObjectId id_;
  std::string owner_;
};

/// One argument of a call as it leaves the caller: encoded bytes or an object reference.
struct EncodedArg {
  std::string inline_data;
  std::shared_ptr<RefState> ref;  // set for reference arguments
  /// References nested inside the value (a vector of ObjectRefs, say), pinned until the
  /// call finishes so the callee can borrow them.
  std::vector<std::shared_ptr<RefState>> nested;
};

/// While alive on a thread, collects every ObjectRef encoded on that thread.
class NestedRefCollector {
 public:
  explicit NestedRefCollector(std::vector<std::shared_ptr<RefState>>* out);
  ~NestedRefCollector();
  /// Called by the ObjectRef codec.
  static void note(const std::shared_ptr<RefState>& ref);

 private:
  std::vector<std::shared_ptr<RefState>>* previous_;
};

/// Where the executing side puts a function's encoded result.
class ResultSink {
 public:
  virtual ~ResultSink() = default;
  /// Returns `size` writable bytes for the encoded result (inline or shared memory).
  virtual uint8_t* reserve(size_t size) = 0;
};

/// A view of one resolved argument; valid for the duration of the call.
struct ArgView {
  const uint8_t* data;
  size_t size;
};

/// The runtime of this process (driver or worker). All methods are thread-safe.
class Runtime {
 public:
  virtual ~Runtime() = default;

  virtual void add_local_ref(const ObjectId& id, const std::string& owner) = 0;
  virtual void remove_local_ref(const ObjectId& id) = 0;

  /// Stores a small encoded value owned by this process; the returned id carries one
  /// local reference for the caller to adopt. `nested`: ObjectRefs inside the value, kept
  /// alive for as long as the object is.
  virtual ObjectId put_inline(std::string bytes, std::vector<std::shared_ptr<RefState>> nested = {}) = 0;
  /// Creates a shared-memory object of `size` bytes for the caller to fill, then
  /// `seal_object` publishes it and returns its id with one adopted reference.
  virtual std::unique_ptr<WritableObject> create_object(size_t size) = 0;
  virtual ObjectId seal_object(std::unique_ptr<WritableObject> object,
                               std::vector<std::shared_ptr<RefState>> nested = {}) = 0;

  /// Blocks until the object is ready and returns its bytes; rethrows a stored error.
  virtual std::shared_ptr<Buffer> get(const ObjectId& id, const std::string& owner,
                                      std::optional<std::chrono::milliseconds> timeout) = 0;
  /// Returns which of `ids` are ready once `num_returns` are, or when the timeout passes.
  virtual std::vector<bool> wait(const std::vector<std::pair<ObjectId, std::string>>& ids,
                                 size_t num_returns,
                                 std::optional<std::chrono::milliseconds> timeout) = 0;

  virtual ObjectId submit_task(const std::string& function, std::vector<EncodedArg> args,
                               const TaskOptions& options) = 0;
  virtual ActorId create_actor(const std::string& factory, const std::string& class_key,
                               std::vector<EncodedArg> args, const ActorOptions& options) = 0;
  virtual ObjectId submit_actor_task(const ActorId& actor, const std::string& method,
                                     std::vector<EncodedArg> args) = 0;
  /// The id of the live actor named `name` whose class is `class_key`, if any.
  virtual std::optional<ActorId> get_named_actor(const std::string& name,
                                                 const std::string& class_key) = 0;
  virtual void kill_actor(const ActorId& actor, bool no_restart) = 0;
  /// Cancels the task or actor call whose result is `id` (see gantry::cancel).
  virtual void cancel(const ObjectId& id, const std::string& owner, const CancelOptions& options) = 0;
  /// The cluster's nodes, in the order they joined.
  virtual std::vector<NodeInfo> nodes() = 0;
  /// Placement groups (see gantry/placement_group.h); ids are hex.
  virtual std::string create_placement_group(const PlacementGroupOptions& options) = 0;
  virtual bool wait_placement_group(const std::string& id, std::chrono::milliseconds timeout) = 0;
  virtual void remove_placement_group(const std::string& id) = 0;
  /// The id and options of the live group named `name`.
  virtual std::optional<std::pair<std::string, PlacementGroupOptions>> find_placement_group(const std::string& name) = 0;
  /// Per bundle, the hex id of the node holding it (empty while it has none).
  virtual std::vector<std::string> placement_group_bundle_nodes(const std::string& id) = 0;

  /// The head's key-value store (gantry/kv.h); `cluster` picks the cluster's namespace
  /// over this job's.
  virtual bool kv_put(const std::string& key, std::string_view value, bool overwrite, bool cluster) = 0;
  virtual std::optional<std::string> kv_get(const std::string& key, bool cluster) = 0;
  virtual std::optional<std::string> kv_wait(const std::string& key, std::chrono::milliseconds timeout,
                                             bool cluster) = 0;
  virtual bool kv_del(const std::string& key, bool cluster) = 0;
  virtual int64_t kv_add(const std::string& key, int64_t delta, bool cluster) = 0;
  virtual std::vector<std::string> kv_keys(const std::string& prefix, bool cluster) = 0;
  /// Resources of the cluster's live nodes, summed per kind: their totals, or what was
  /// free at the head's last look (`available`).
  virtual std::map<std::string, double> cluster_resources(bool available) = 0;

  /// The running task or actor call is waiting (true) or runs again (false): while any
  /// wait is open, its worker lends its CPUs to other work. Nests; no-op in a driver.
  virtual void set_blocked(bool blocked) = 0;

  /// This process's address, which owners and borrowers use to reach it.
  virtual const std::string& address() const = 0;
  virtual RuntimeContext context() const = 0;
  /// Objects at or above this many bytes go to shared memory instead of inline.
  virtual size_t inline_threshold() const = 0;
};

/// The running runtime; throws gantry::Error when `gantry::init` has not run.
Runtime& runtime();
/// The running runtime or null (during shutdown, or before init).
Runtime* runtime_if_alive();

}  // namespace gantry::detail
