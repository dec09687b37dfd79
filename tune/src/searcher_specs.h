#pragma once

// Rebuilding built-in searchers from their spec() (make_searcher dispatches on
// spec["name"]); each is defined in its searcher's file.

#include <memory>

#include "gantry/tune/searcher.h"

namespace gantry::tune::detail {

std::shared_ptr<Searcher> basic_variant_from_spec(const Json& spec);
std::shared_ptr<Searcher> tpe_from_spec(const Json& spec);
std::shared_ptr<Searcher> bohb_from_spec(const Json& spec);
std::shared_ptr<Searcher> limiter_from_spec(const Json& spec);

/// The seed to use: the given one, or a fresh one from std::random_device (which spec()
/// then records, so a restored sweep replays the same draws).
uint64_t seed_or_random(const std::optional<uint64_t>& seed);

}  // namespace gantry::tune::detail
