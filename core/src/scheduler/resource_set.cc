#include "scheduler/resource_set.h"

#include <charconv>
#include <cmath>
#include <stdexcept>

namespace gantry::internal {

namespace {

// Shortest form that reads back as the same double, so an error message shows the value the
// user wrote ("0.1", not "0.10000000000000001") without ever hiding a difference.
std::string format_double(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, end) : std::string("?");
}

}  // namespace

FixedPoint FixedPoint::from_double(double v) {
  if (std::isnan(v)) throw std::invalid_argument("quantity is not a number (NaN)");
  if (std::isinf(v)) throw std::invalid_argument("quantity " + format_double(v) + " is infinite");
  if (v < 0) throw std::invalid_argument("quantity " + format_double(v) + " is negative");
  if (v > kMaxResourceQuantity) {
    throw std::invalid_argument("quantity " + format_double(v) + " is above the maximum " +
                                format_double(kMaxResourceQuantity));
  }
  return from_raw(std::llround(v * kResourceUnit));
}

std::string FixedPoint::to_string() const {
  // Work on the magnitude as unsigned so that even INT64_MIN prints without overflow.
  uint64_t magnitude =
      raw_ < 0 ? uint64_t{0} - static_cast<uint64_t>(raw_) : static_cast<uint64_t>(raw_);
  std::string out = raw_ < 0 ? "-" : "";
  out += std::to_string(magnitude / kResourceUnit);
  uint64_t fraction = magnitude % kResourceUnit;
  if (fraction != 0) {
    std::string digits = std::to_string(fraction);
    digits.insert(0, 4 - digits.size(), '0');  // kResourceUnit has four decimal places
    digits.erase(digits.find_last_not_of('0') + 1);
    out += "." + digits;
  }
  return out;
}

std::ostream& operator<<(std::ostream& os, FixedPoint q) { return os << q.to_string(); }

ResourceSet ResourceSet::from_doubles(const std::map<std::string, double>& m) {
  ResourceSet set;
  for (const auto& [name, value] : m) {
    if (name.empty()) throw std::invalid_argument("resource name must not be empty");
    FixedPoint q;
    try {
      q = FixedPoint::from_double(value);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("resource '" + name + "': " + e.what());
    }
    set.set(name, q);
  }
  return set;
}

void ResourceSet::set(const std::string& name, FixedPoint q) {
  if (name.empty()) throw std::invalid_argument("resource name must not be empty");
  if (q < FixedPoint()) {
    throw std::invalid_argument("resource '" + name + "': quantity " + q.to_string() +
                                " is negative");
  }
  if (q == FixedPoint()) {
    quantities_.erase(name);
  } else {
    quantities_[name] = q;
  }
}

FixedPoint ResourceSet::get(const std::string& name) const {
  auto it = quantities_.find(name);
  return it == quantities_.end() ? FixedPoint() : it->second;
}

bool ResourceSet::contains(const ResourceSet& request) const {
  for (const auto& [name, q] : request.quantities_) {
    if (get(name) < q) return false;
  }
  return true;
}

ResourceSet& ResourceSet::operator+=(const ResourceSet& other) {
  // Only values of existing keys change or new keys are inserted; map iterators stay valid,
  // so `s += s` is safe.
  for (const auto& [name, q] : other.quantities_) quantities_[name] += q;
  return *this;
}

ResourceSet& ResourceSet::operator-=(const ResourceSet& other) {
  // Check everything before changing anything, so a failed subtraction leaves us intact.
  for (const auto& [name, q] : other.quantities_) {
    if (get(name) < q) {
      throw std::logic_error("cannot subtract " + other.to_string() + " from " + to_string() +
                             ": " + name + " would be negative");
    }
  }
  if (&other == this) {
    quantities_.clear();
    return *this;
  }
  for (const auto& [name, q] : other.quantities_) {
    auto it = quantities_.find(name);
    it->second -= q;
    if (it->second == FixedPoint()) quantities_.erase(it);
  }
  return *this;
}

std::map<std::string, double> ResourceSet::to_doubles() const {
  std::map<std::string, double> out;
  for (const auto& [name, q] : quantities_) out[name] = q.to_double();
  return out;
}

std::string ResourceSet::to_string() const {
  std::string out = "{";
  for (const auto& [name, q] : quantities_) {
    if (out.size() > 1) out += ", ";
    out += name + ": " + q.to_string();
  }
  return out + "}";
}

std::ostream& operator<<(std::ostream& os, const ResourceSet& set) { return os << set.to_string(); }

}  // namespace gantry::internal
