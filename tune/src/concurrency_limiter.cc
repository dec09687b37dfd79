#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "gantry/errors.h"
#include "gantry/tune/searcher.h"
#include "searcher_specs.h"

namespace gantry::tune {
namespace {

// Counts the trials its inner searcher suggested that have not ended, and answers kWait
// while `max_concurrent` of them are live.
//
// With `batch`, a batch is the trials suggested since the previous batch ended (at most
// `max_concurrent`); it ends when every one of them has ended, and only then are their
// completions handed to the inner searcher, together and in the order they ended, so the
// inner searcher learns from whole batches. A batch the inner searcher leaves short (it
// waits or is finished) ends the same way, so a searcher waiting for results is never
// starved.
class ConcurrencyLimiterSearcher final : public Searcher {
 public:
  ConcurrencyLimiterSearcher(std::shared_ptr<Searcher> inner, int max_concurrent, bool batch)
      : inner_(std::move(inner)), max_concurrent_(max_concurrent), batch_(batch) {
    if (inner_ == nullptr) throw Error("ConcurrencyLimiter: the searcher to wrap is null");
    if (max_concurrent_ < 1) {
      throw Error("ConcurrencyLimiter: max_concurrent must be at least 1, got " + std::to_string(max_concurrent_));
    }
  }

  void setup(const SearchSetup& setup) override { inner_->setup(setup); }

  Suggestion suggest(const std::string& trial_id) override {
    if (static_cast<int>(live_.size()) >= max_concurrent_) return Suggestion::wait();
    Suggestion s = inner_->suggest(trial_id);
    if (s.status == Suggestion::Status::kConfig) live_.insert(trial_id);
    return s;
  }

  void on_trial_result(const std::string& trial_id, const Json& result) override {
    inner_->on_trial_result(trial_id, result);
  }

  void on_trial_complete(const std::string& trial_id, const Json& config, const Json& result, bool error) override {
    // A trial this limiter did not suggest (a points_to_evaluate config) never took a
    // slot, but the inner searcher still learns from it.
    if (live_.count(trial_id) == 0) {
      inner_->on_trial_complete(trial_id, config, result, error);
      return;
    }
    if (!batch_) {
      live_.erase(trial_id);
      inner_->on_trial_complete(trial_id, config, result, error);
      return;
    }
    ended_.push_back({trial_id, config, result, error});
    if (ended_.size() < live_.size()) return;
    live_.clear();
    std::vector<Ended> ended = std::move(ended_);
    ended_.clear();
    for (const Ended& e : ended) inner_->on_trial_complete(e.trial_id, e.config, e.result, e.error);
  }

  std::string name() const override { return "limiter(" + inner_->name() + ")"; }

  Json spec() const override {
    Json inner = inner_->spec();
    if (inner.is_null()) return nullptr;
    return {
        {"name", "limiter"}, {"max_concurrent", max_concurrent_}, {"batch", batch_}, {"searcher", std::move(inner)}};
  }

 private:
  struct Ended {
    std::string trial_id;
    Json config;
    Json result;
    bool error;
  };

  std::shared_ptr<Searcher> inner_;
  int max_concurrent_;
  bool batch_;
  // Suggested and not yet handed back to the inner searcher as complete: running trials,
  // and with `batch` also the ended trials of an unfinished batch (which keep their slot).
  std::set<std::string> live_;
  std::vector<Ended> ended_;  // with `batch`: the current batch's ended trials, in order
};

}  // namespace

std::shared_ptr<Searcher> ConcurrencyLimiter(std::shared_ptr<Searcher> searcher, int max_concurrent, bool batch) {
  return std::make_shared<ConcurrencyLimiterSearcher>(std::move(searcher), max_concurrent, batch);
}

namespace detail {

std::shared_ptr<Searcher> limiter_from_spec(const Json& spec) {
  if (!spec.is_object() || !spec.contains("max_concurrent") || !spec["max_concurrent"].is_number_integer() ||
      !spec.contains("searcher")) {
    throw Error("limiter spec: needs an integer \"max_concurrent\" and a \"searcher\", got " + spec.dump());
  }
  return ConcurrencyLimiter(make_searcher(spec["searcher"]), spec["max_concurrent"].get<int>(),
                            spec.value("batch", false));
}

}  // namespace detail
}  // namespace gantry::tune
