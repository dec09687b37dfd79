#include "common/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <memory>
#include <mutex>

namespace gantry::internal {
namespace {

std::mutex g_mu;  // guards g_logger replacement
std::shared_ptr<spdlog::logger> g_logger;

std::shared_ptr<spdlog::logger> make_default() {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("gantry", sink);
  logger->set_level(spdlog::level::warn);
  logger->set_pattern("[gantry %L %H:%M:%S.%e] %v");
  return logger;
}

}  // namespace

void setup_logging(const std::string& level, const std::string& log_file, const std::string& process_tag) {
  auto console = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  console->set_level(spdlog::level::from_str(level));
  console->set_pattern("[gantry %L %H:%M:%S.%e " + process_tag + "] %v");
  std::vector<spdlog::sink_ptr> sinks{console};
  if (!log_file.empty()) {
    try {
      auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file);
      file->set_level(spdlog::level::debug);
      file->set_pattern("[%Y-%m-%d %H:%M:%S.%f %L %t] %v");
      sinks.push_back(file);
    } catch (const spdlog::spdlog_ex& e) {
      console->log(spdlog::details::log_msg("gantry", spdlog::level::warn,
                                            std::string("cannot open log file: ") + e.what()));
    }
  }
  auto logger = std::make_shared<spdlog::logger>("gantry", sinks.begin(), sinks.end());
  logger->set_level(spdlog::level::debug);
  logger->flush_on(spdlog::level::info);
  std::lock_guard<std::mutex> lock(g_mu);
  g_logger = std::move(logger);
}

spdlog::logger& log() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_logger) g_logger = make_default();
  return *g_logger;
}

}  // namespace gantry::internal
