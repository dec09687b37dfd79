#include "gantry/published_record.h"

#include <algorithm>
#include <exception>
#include <iostream>

#include "gantry/kv.h"

namespace gantry {

RecordPublisher::RecordPublisher(std::string key, std::string label, Sink sink)
    : key_(std::move(key)), label_(std::move(label)), sink_(std::move(sink)) {}

RecordPublisher::Sink RecordPublisher::cluster_kv() {
  return [](const std::string& key, const std::string& value) { kv::put(key, value, {.cluster = true}); };
}

std::string RecordPublisher::key_for(const std::string& kind, const std::string& name) {
  return "gantry.dashboard/" + kind + "/" + name;
}

void RecordPublisher::publish_if_due(const std::function<std::string()>& make, Clock::time_point now) {
  if (!changed_ || now - last_write_ < std::max<Clock::duration>(kInterval, kCostFactor * last_cost_)) return;
  if (failed_before_ && now - last_failure_ < kRetryAfterFailure) return;
  publish(make, now);
}

void RecordPublisher::publish(const std::function<std::string()>& make, Clock::time_point now) {
  changed_ = false;
  last_write_ = now;
  auto began = Clock::now();
  try {
    sink_(key_, make());
    last_cost_ = Clock::now() - began;
    failed_before_ = false;
  } catch (const std::exception& e) {
    failed_before_ = true;
    last_failure_ = now;
    changed_ = true;  // still unwritten: the periodic write tries again after kRetryAfterFailure
    if (!failure_said_) {
      failure_said_ = true;
      std::cerr << label_ << " cannot write the dashboard's record " << key_ << " (" << e.what()
                << "); going on without it (said once)" << std::endl;
    }
  }
}

}  // namespace gantry
