#include "trial_runner.h"

#include <unistd.h>

#include "gantry/gantry.h"

namespace gantry::tune::detail {
namespace {

using Clock = std::chrono::steady_clock;

// The session a trainable's TrialContext talks to while `TrialRunner::run` runs it.
class RunnerSession : public TrialSession {
 public:
  RunnerSession(TrialRunner* runner, const TrialStart& start)
      : runner_(runner),
        config_(Json::parse(start.config_json)),
        checkpoint_(start.checkpoint.to_checkpoint()),
        trial_id_(start.trial_id),
        trial_name_(start.trial_name),
        experiment_(start.experiment),
        iteration_(start.iteration),
        spec_(start.spec_json.empty() ? Json() : Json::parse(start.spec_json)) {}

  const Config& config() const override { return config_; }
  std::optional<Checkpoint> checkpoint() const override { return checkpoint_; }
  void report(Json metrics, std::optional<Checkpoint> checkpoint) override {
    if (!metrics.is_object()) {
      throw Error("TrialContext::report takes a JSON object of metrics, not " + metrics.dump());
    }
    ++iteration_;
    runner_->report(std::move(metrics), std::move(checkpoint));
  }
  const std::string& trial_id() const override { return trial_id_; }
  const std::string& trial_name() const override { return trial_name_; }
  const std::string& experiment_name() const override { return experiment_; }
  int64_t iteration() const override { return iteration_; }
  const Json& trainable_spec() const override { return spec_; }

 private:
  TrialRunner* runner_;  // not owned
  Config config_;
  std::optional<Checkpoint> checkpoint_;
  std::string trial_id_;
  std::string trial_name_;
  std::string experiment_;
  int64_t iteration_;
  Json spec_;
};

}  // namespace

CheckpointData CheckpointData::of(const std::optional<Checkpoint>& checkpoint) {
  CheckpointData d;
  if (!checkpoint) return d;
  d.present = true;
  d.values_json = checkpoint->values().dump();
  d.files = checkpoint->files();
  return d;
}

std::optional<Checkpoint> CheckpointData::to_checkpoint() const {
  if (!present) return std::nullopt;
  Checkpoint c;
  Json values = Json::parse(values_json);
  for (auto it = values.begin(); it != values.end(); ++it) c.set(it.key(), it.value());
  for (const auto& [name, contents] : files) c.add_file(name, contents);
  return c;
}

TrialRunner* TrialRunner::create() { return new TrialRunner(); }

RunnerInfo TrialRunner::info() {
  RuntimeContext ctx = gantry::runtime_context();
  return {ctx.node_id, ctx.node_ip, ::getpid(), ctx.gpu_ids};
}

std::string TrialRunner::run(TrialStart start) {
  Trainable fn = find_trainable(start.trainable);
  if (fn == nullptr) {
    throw Error("no trainable is registered as \"" + start.trainable +
                "\" in this executable: add GANTRY_TRAINABLE(" + start.trainable + "); next to it");
  }
  {
    std::lock_guard lock(mu_);
    run_ = start.run;
    running_ = true;
    unsent_.reset();
    waiting_for_reply_ = false;
    reply_ = kNoReply;
    last_report_ = Clock::now();
    changed_.notify_all();
  }
  RunnerSession session(this, start);
  TrialContext context(&session);
  std::string outcome = "finished";
  // The end is queued for `next` whichever way the trainable leaves.
  auto finish = [this] {
    std::lock_guard lock(mu_);
    running_ = false;
    unsent_ = TrialEvent{TrialEvent::kEnded, {}, 0, {}};
    changed_.notify_all();
  };
  try {
    fn(context);
  } catch (const TrialStopped&) {
    outcome = "stopped";
  } catch (...) {
    finish();
    throw;
  }
  finish();
  return outcome;
}

void TrialRunner::report(Json metrics, std::optional<Checkpoint> checkpoint) {
  TrialEvent event;
  event.kind = TrialEvent::kReport;
  std::vector<uint8_t> packed = Json::to_msgpack(metrics);
  event.metrics_msgpack.assign(packed.begin(), packed.end());
  event.checkpoint = CheckpointData::of(checkpoint);
  std::unique_lock lock(mu_);
  Clock::time_point now = Clock::now();
  event.time_this_iter_s = std::chrono::duration<double>(now - last_report_).count();
  unsent_ = std::move(event);
  waiting_for_reply_ = true;
  reply_ = kNoReply;
  changed_.notify_all();
  {
    BlockedScope waiting;  // the trial's CPUs may run other work while the driver decides
    changed_.wait(lock, [this] { return reply_ != kNoReply; });
  }
  waiting_for_reply_ = false;
  int reply = reply_;
  reply_ = kNoReply;
  last_report_ = Clock::now();
  if (reply == kStopRun) throw TrialStopped{};
}

TrialEvent TrialRunner::next(int64_t run, int reply, int64_t wait_ms) {
  std::unique_lock lock(mu_);
  auto deadline = Clock::now() + std::chrono::milliseconds(wait_ms);
  // `run` and this call may start together on the actor's two threads: wait for the run
  // to begin rather than take this for a call about an earlier one.
  if (!changed_.wait_until(lock, deadline, [&] { return run_ >= run; })) return TrialEvent{};
  if (run != run_) return TrialEvent{TrialEvent::kEnded, {}, 0, {}};  // a call for a run long gone
  if (reply != kNoReply && waiting_for_reply_ && !unsent_) {
    reply_ = reply;
    changed_.notify_all();
  }
  changed_.wait_until(lock, deadline, [this] { return unsent_.has_value(); });
  if (!unsent_) return TrialEvent{};
  TrialEvent out = std::move(*unsent_);
  unsent_.reset();
  return out;
}

}  // namespace gantry::tune::detail
