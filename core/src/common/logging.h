#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace gantry::internal {

/// Sets up gantry's logger: `level` on stderr, everything at debug and above in
/// `log_file` when given. Call once per process at start-up.
void setup_logging(const std::string& level, const std::string& log_file, const std::string& process_tag);

/// gantry's logger (never null; a stderr logger before setup_logging).
spdlog::logger& log();

}  // namespace gantry::internal

#define GANTRY_LOG_DEBUG(...) ::gantry::internal::log().debug(__VA_ARGS__)
#define GANTRY_LOG_INFO(...) ::gantry::internal::log().info(__VA_ARGS__)
#define GANTRY_LOG_WARN(...) ::gantry::internal::log().warn(__VA_ARGS__)
#define GANTRY_LOG_ERROR(...) ::gantry::internal::log().error(__VA_ARGS__)
