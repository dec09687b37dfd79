#include "runtime/reference_counter.h"

namespace gantry::internal {

ReferenceCounter::ReferenceCounter(std::string self_address, FreeCallback on_free, BorrowCallback on_borrow)
    : self_(std::move(self_address)), on_free_(std::move(on_free)), on_borrow_(std::move(on_borrow)) {}

void ReferenceCounter::add_owned(const ObjectId& id, bool task_result) {
  std::lock_guard<std::mutex> lock(mu_);
  Ref& r = refs_[id];
  r.owned = true;
  r.task_result = task_result;
  r.owner = self_;
  ++r.local;
}

void ReferenceCounter::add_local(const ObjectId& id, const std::string& owner) {
  bool new_borrow = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, inserted] = refs_.try_emplace(id);
    Ref& r = it->second;
    if (inserted) {
      r.owner = owner;
      // A reference to an object owned here that was already freed stays a dangling
      // local count; get() on it reports the object lost.
      new_borrow = owner != self_;
    }
    ++r.local;
  }
  if (new_borrow && on_borrow_) on_borrow_(id, owner, true);
}

ReferenceCounter::Release ReferenceCounter::release_if_unused_locked(
    std::unordered_map<ObjectId, Ref>::iterator it, std::string* owner) {
  Ref& r = it->second;
  if (r.local > 0 || r.submitted > 0 || !r.borrowers.empty()) return Release::kNone;
  Release what = r.owned ? Release::kFree : (r.owner != self_ ? Release::kUnborrow : Release::kNone);
  *owner = r.owner;
  refs_.erase(it);
  return what;
}

void ReferenceCounter::act(const ObjectId& id, Release release, const std::string& owner) {
  if (release == Release::kFree && on_free_) on_free_(id);
  if (release == Release::kUnborrow && on_borrow_) on_borrow_(id, owner, false);
}

void ReferenceCounter::remove_local(const ObjectId& id) {
  Release release = Release::kNone;
  std::string owner;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = refs_.find(id);
    if (it == refs_.end()) return;
    --it->second.local;
    release = release_if_unused_locked(it, &owner);
  }
  act(id, release, owner);
}

void ReferenceCounter::add_submitted(const std::vector<ObjectId>& ids) {
  if (ids.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& id : ids) {
    auto it = refs_.find(id);
    // A submitting caller always holds a reference, so the entry exists.
    if (it != refs_.end()) ++it->second.submitted;
  }
}

void ReferenceCounter::remove_submitted(const std::vector<ObjectId>& ids) {
  if (ids.empty()) return;
  std::vector<std::tuple<ObjectId, Release, std::string>> actions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& id : ids) {
      auto it = refs_.find(id);
      if (it == refs_.end()) continue;
      --it->second.submitted;
      std::string owner;
      Release release = release_if_unused_locked(it, &owner);
      if (release != Release::kNone) actions.emplace_back(id, release, owner);
    }
  }
  for (const auto& [id, release, owner] : actions) act(id, release, owner);
}

void ReferenceCounter::add_borrower(const ObjectId& id, const std::string& borrower) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = refs_.find(id);
  if (it != refs_.end() && it->second.owned) it->second.borrowers.insert(borrower);
}

void ReferenceCounter::remove_borrower(const ObjectId& id, const std::string& borrower) {
  Release release = Release::kNone;
  std::string owner;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = refs_.find(id);
    if (it == refs_.end()) return;
    it->second.borrowers.erase(borrower);
    release = release_if_unused_locked(it, &owner);
  }
  act(id, release, owner);
}

bool ReferenceCounter::is_owned(const ObjectId& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = refs_.find(id);
  return it != refs_.end() && it->second.owned;
}

bool ReferenceCounter::is_task_result(const ObjectId& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = refs_.find(id);
  return it != refs_.end() && it->second.owned && it->second.task_result;
}

size_t ReferenceCounter::num_tracked() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refs_.size();
}

std::vector<ReferenceCounter::OwnedRef> ReferenceCounter::owned(size_t limit) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<OwnedRef> out;
  for (const auto& [id, ref] : refs_) {
    if (!ref.owned) continue;
    if (out.size() >= limit) break;
    out.push_back({id, ref.local, ref.submitted, ref.borrowers.size()});
  }
  return out;
}

}  // namespace gantry::internal
