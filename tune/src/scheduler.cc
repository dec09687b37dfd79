#include "gantry/tune/scheduler.h"

#include <string>

#include "gantry/errors.h"
#include "scheduler_specs.h"

namespace gantry::tune {

const char* status_name(TrialStatus status) {
  switch (status) {
    case TrialStatus::kPending:
      return "PENDING";
    case TrialStatus::kRunning:
      return "RUNNING";
    case TrialStatus::kPaused:
      return "PAUSED";
    case TrialStatus::kTerminated:
      return "TERMINATED";
    case TrialStatus::kError:
      return "ERROR";
  }
  return "UNKNOWN";
}

std::optional<std::string> TrialScheduler::choose_trial_to_run(const TrialTable& table) {
  const TrialView* first_paused = nullptr;
  for (const TrialView* trial : table.trials()) {
    if (trial->status == TrialStatus::kPending) return trial->trial_id;
    if (trial->status == TrialStatus::kPaused && first_paused == nullptr) first_paused = trial;
  }
  if (first_paused != nullptr) return first_paused->trial_id;
  return std::nullopt;
}

std::shared_ptr<TrialScheduler> make_scheduler(const Json& spec) {
  if (spec.is_null()) {
    throw Error(
        "make_scheduler: the spec is null, which a scheduler of your own returns; pass that scheduler "
        "again (RestoreOptions::scheduler)");
  }
  if (!spec.is_object() || !spec.contains("name") || !spec["name"].is_string()) {
    throw Error("make_scheduler: a scheduler spec is a JSON object with a string \"name\", got " + spec.dump());
  }
  const std::string name = spec["name"].get<std::string>();
  if (name == "fifo") return detail::fifo_from_spec(spec);
  if (name == "asha") return detail::asha_from_spec(spec);
  if (name == "hyperband") return detail::hyperband_from_spec(spec);
  if (name == "median_stopping") return detail::median_stopping_from_spec(spec);
  if (name == "pbt") return detail::pbt_from_spec(spec);
  throw Error("make_scheduler: unknown scheduler \"" + name +
              "\" (built-in: fifo, asha, hyperband, median_stopping, pbt)");
}

}  // namespace gantry::tune
