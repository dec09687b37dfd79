#include "gantry/tune/searcher.h"

#include <random>

#include "gantry/errors.h"
#include "searcher_specs.h"

namespace gantry::tune {

std::shared_ptr<Searcher> make_searcher(const Json& spec) {
  if (!spec.is_object() || !spec.contains("name") || !spec["name"].is_string()) {
    throw Error("make_searcher: a searcher spec needs a \"name\" string, got " + spec.dump());
  }
  const auto name = spec["name"].get<std::string>();
  if (name == "basic_variant") return detail::basic_variant_from_spec(spec);
  if (name == "tpe") return detail::tpe_from_spec(spec);
  if (name == "bohb") return detail::bohb_from_spec(spec);
  if (name == "limiter") return detail::limiter_from_spec(spec);
  throw Error("make_searcher: unknown searcher \"" + name +
              "\" (built-in: basic_variant, tpe, bohb, limiter; a searcher of your own must be passed "
              "again to Tuner::restore)");
}

namespace detail {

uint64_t seed_or_random(const std::optional<uint64_t>& seed) {
  if (seed) return *seed;
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ static_cast<uint64_t>(device());
}

}  // namespace detail
}  // namespace gantry::tune
