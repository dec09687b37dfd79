#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gantry/detail/registry.h"
#include "gantry/tune/checkpoint.h"
#include "gantry/tune/search_space.h"

namespace gantry::tune {

class TrialContext;

namespace detail {
/// What a TrialContext talks to: the trial's runner in its actor (or a test's fake).
class TrialSession {
 public:
  virtual ~TrialSession() = default;
  virtual const Config& config() const = 0;
  virtual std::optional<Checkpoint> checkpoint() const = 0;
  virtual void report(Json metrics, std::optional<Checkpoint> checkpoint) = 0;
  virtual const std::string& trial_id() const = 0;
  virtual const std::string& trial_name() const = 0;
  virtual const std::string& experiment_name() const = 0;
  virtual int64_t iteration() const = 0;
  /// What the trainable needs beyond its config (a Train trial's trainer), or null.
  virtual const Json& trainable_spec() const = 0;
};
/// The session behind a context (for gantry's own trainables).
TrialSession* session_of(const TrialContext& context);
}  // namespace detail

/// Thrown by TrialContext::report when the scheduler ends the trial there (stop, pause,
/// or a PBT exploit): it unwinds the trainable and the trial ends cleanly. It is not a
/// std::exception, so `catch (const std::exception&)` in the trainable lets it through;
/// a trainable that catches everything must rethrow it.
struct TrialStopped {};

/// What a trainable sees of its trial.
///
///     void objective(tune::TrialContext& t) {
///       double lr = t.config().get<double>("lr");
///       for (int step = 0; step < 100; ++step) t.report({{"loss", f(lr, step)}, {"step", step}});
///     }
///     GANTRY_TRAINABLE(objective);
class TrialContext {
 public:
  explicit TrialContext(detail::TrialSession* session) : session_(session) {}

  /// The trial's config: the sampled values (after a PBT exploit, the new ones).
  const Config& config() const { return session_->config(); }
  /// The checkpoint to start from: the trial's own latest when it resumes (after a
  /// pause, a failure or a restored sweep), a copy of another trial's after a PBT
  /// exploit; nullopt on a fresh start.
  std::optional<Checkpoint> checkpoint() const { return session_->checkpoint(); }
  /// Reports one result (a JSON object of metrics) and, optionally, a checkpoint. The
  /// scheduler decides at each report whether the trial goes on; when it does not, this
  /// throws TrialStopped. Blocks until the decision is made. Must be called from the
  /// thread running the trainable.
  void report(Json metrics, std::optional<Checkpoint> checkpoint = std::nullopt) {
    session_->report(std::move(metrics), std::move(checkpoint));
  }
  const std::string& trial_id() const { return session_->trial_id(); }
  const std::string& trial_name() const { return session_->trial_name(); }
  const std::string& experiment_name() const { return session_->experiment_name(); }
  /// Reports made by this trial so far, across restarts (training_iteration of the last).
  int64_t iteration() const { return session_->iteration(); }

 private:
  friend detail::TrialSession* detail::session_of(const TrialContext& context);
  detail::TrialSession* session_;  // not owned
};

/// The function a trial runs.
using Trainable = void (*)(TrialContext&);

namespace detail {
inline TrialSession* session_of(const TrialContext& context) { return context.session_; }
bool register_trainable(const char* name, Trainable fn);
/// The registered name of `fn`, or empty.
std::string trainable_name(Trainable fn);
/// The trainable registered as `name`, or null.
Trainable find_trainable(const std::string& name);
}  // namespace detail

}  // namespace gantry::tune

/// Registers a trainable `void fn(gantry::tune::TrialContext&)` so that trial actors
/// (started from the same executable) can run it. Once per function, at namespace scope.
#define GANTRY_TRAINABLE(fn)                                                               \
  [[maybe_unused]] static const bool GANTRY_DETAIL_CAT(gantry_trainable_, __COUNTER__) = \
      ::gantry::tune::detail::register_trainable(#fn, fn)
