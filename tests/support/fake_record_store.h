#pragma once

// The head's key-value store as a published record sees it (gantry::RecordPublisher's
// sink), for unit tests of Train's and Tune's dashboard records without a cluster.
#include <map>
#include <string>

#include "gantry/config.h"
#include "gantry/published_record.h"

namespace gantry::test_support {

struct FakeRecordStore {
  std::map<std::string, std::string> values;
  int puts = 0;
  RecordPublisher::Sink sink() {
    return [this](const std::string& key, const std::string& value) {
      ++puts;
      values[key] = value;
    };
  }
  Json read(const std::string& key) const { return Json::parse(values.at(key)); }
};

}  // namespace gantry::test_support
