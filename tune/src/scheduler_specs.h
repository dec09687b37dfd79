#pragma once

// Rebuilding built-in schedulers from their spec() (make_scheduler dispatches on
// spec["name"]); each is defined in its scheduler's file.

#include <memory>

#include "gantry/tune/scheduler.h"

namespace gantry::tune::detail {

std::shared_ptr<TrialScheduler> fifo_from_spec(const Json& spec);
std::shared_ptr<TrialScheduler> asha_from_spec(const Json& spec);
std::shared_ptr<TrialScheduler> hyperband_from_spec(const Json& spec);
std::shared_ptr<TrialScheduler> median_stopping_from_spec(const Json& spec);
std::shared_ptr<TrialScheduler> pbt_from_spec(const Json& spec);

}  // namespace gantry::tune::detail
