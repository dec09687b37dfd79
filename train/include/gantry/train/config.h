#pragma once

#include "gantry/config.h"

namespace gantry::train {

/// JSON values: configs, metrics and checkpoint metadata (nlohmann::json).
using Json = gantry::Json;
/// A training run's configuration: a JSON object the driver gives every worker.
///
///     train::Config config = {{"lr", 0.01}, {"epochs", 10}};
///     double lr = ctx.config().get<double>("lr");
using Config = gantry::Config;

}  // namespace gantry::train
