#pragma once

// Small helpers the built-in schedulers share: formatting numbers for their messages,
// reading numeric values of a result, and reading options back from a spec().

#include <cstdio>
#include <optional>
#include <string>

#include "gantry/errors.h"
#include "gantry/tune/scheduler.h"

namespace gantry::tune::detail {

/// `x` with up to six significant digits ("%.6g"), as schedulers print times and metrics in
/// their decisions and errors: number(16) == "16", number(0.1 + 0.2) == "0.3".
inline std::string number(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.6g", x);
  return buffer;
}

/// The numeric value of `result[key]`, or nullopt when `result` is not an object, the key is
/// absent or its value is not a number.
inline std::optional<double> number_at(const Json& result, const std::string& key) {
  if (!result.is_object()) return std::nullopt;
  auto it = result.find(key);
  if (it == result.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

/// The option `key` of a scheduler's spec as a T, or `fallback` when it is absent or null.
/// Throws gantry::Error naming the scheduler (e.g. "ASHA spec: ...") when it has the wrong type.
///   options.max_t = spec_value("ASHA", spec, "max_t", options.max_t);
template <typename T>
T spec_value(const char* scheduler, const Json& spec, const char* key, T fallback) {
  if (!spec.contains(key) || spec[key].is_null()) return fallback;
  try {
    return spec[key].get<T>();
  } catch (const Json::exception& e) {
    throw Error(std::string(scheduler) + " spec: \"" + key + "\" has the wrong type: " + spec[key].dump());
  }
}

/// The "mode" of a scheduler's spec: kMin for "min", kMax for "max", nullopt when absent or
/// null. Throws gantry::Error naming the scheduler for any other value.
inline std::optional<Mode> mode_from_spec(const char* scheduler, const Json& spec) {
  if (!spec.contains("mode") || spec["mode"].is_null()) return std::nullopt;
  if (spec["mode"] == "min") return kMin;
  if (spec["mode"] == "max") return kMax;
  throw Error(std::string(scheduler) + " spec: \"mode\" must be \"min\", \"max\" or null, got " + spec["mode"].dump());
}

}  // namespace gantry::tune::detail
