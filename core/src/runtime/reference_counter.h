#pragma once

#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "gantry/ids.h"

namespace gantry::internal {

/// Counts references to objects in this process, and for objects this process owns,
/// the other processes borrowing them. An owned object is freed when it has no local
/// reference, no pending task using it and no borrower; a borrowed one tells its owner
/// when this process lets go. Thread-safe (one mutex); callbacks run without it.
class ReferenceCounter {
 public:
  /// Called when an owned object can be freed.
  using FreeCallback = std::function<void(const ObjectId&)>;
  /// Called when this process starts (add=true) or stops borrowing an object of `owner`.
  /// The add call happens before add_local returns.
  using BorrowCallback = std::function<void(const ObjectId&, const std::string& owner, bool add)>;

  ReferenceCounter(std::string self_address, FreeCallback on_free, BorrowCallback on_borrow);

  /// A new object owned here, with one local reference; `task_result`: the result of a
  /// task or actor call this process submitted (else a put).
  void add_owned(const ObjectId& id, bool task_result = false);
  void add_local(const ObjectId& id, const std::string& owner);
  void remove_local(const ObjectId& id);
  /// Pins objects used as arguments of a task until it finishes.
  void add_submitted(const std::vector<ObjectId>& ids);
  void remove_submitted(const std::vector<ObjectId>& ids);
  /// Owner side: another process borrows / releases an object owned here.
  void add_borrower(const ObjectId& id, const std::string& borrower);
  void remove_borrower(const ObjectId& id, const std::string& borrower);

  bool is_owned(const ObjectId& id) const;
  /// True for an owned object made by add_owned(id, /*task_result=*/true).
  bool is_task_result(const ObjectId& id) const;
  size_t num_tracked() const;

  /// One object this process owns, for listing.
  struct OwnedRef {
    ObjectId id;
    int64_t local = 0;
    int64_t submitted = 0;
    size_t borrowers = 0;
  };
  /// Up to `limit` of the objects this process owns.
  std::vector<OwnedRef> owned(size_t limit) const;

 private:
  struct Ref {
    bool owned = false;
    bool task_result = false;
    std::string owner;
    int64_t local = 0;
    int64_t submitted = 0;
    std::set<std::string> borrowers;
  };
  enum class Release { kNone, kFree, kUnborrow };
  // Needs mu_ held. Erases `it` when nothing holds it; says what to tell whom.
  Release release_if_unused_locked(std::unordered_map<ObjectId, Ref>::iterator it, std::string* owner);
  void act(const ObjectId& id, Release release, const std::string& owner);

  const std::string self_;
  const FreeCallback on_free_;
  const BorrowCallback on_borrow_;
  mutable std::mutex mu_;  // guards refs_
  std::unordered_map<ObjectId, Ref> refs_;
};

}  // namespace gantry::internal
