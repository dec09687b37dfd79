#pragma once

#include <string>

#include "dashboard/prometheus_text.h"
#include "gantry/agent.pb.h"

namespace gantry::internal {

/// Adds one node's families (resources, object store, CPU, memory, workers, GPUs) from
/// the stats its agent reports. The head writes every node's; an agent its own.
void add_node_metrics(PrometheusText& out, const proto::NodeStats& stats);

}  // namespace gantry::internal
