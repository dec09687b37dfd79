#include "gantry/tune/search_space.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>

#include "gantry/errors.h"

namespace gantry::tune {
namespace {

using Kind = Domain::Kind;

// Draws are built from raw 64-bit words rather than std:: distributions, whose output
// differs between standard libraries: a seeded sweep must replay the same values on
// whatever machine restores it.
double unit_interval(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

uint64_t below(Rng& rng, uint64_t n) {
  // Rejects the few words that would make some remainders more likely than others.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t r = rng();
    if (r >= threshold) return r % n;
  }
}

double standard_normal(Rng& rng) {
  const double u1 = 1.0 - unit_interval(rng);  // (0, 1]: log(u1) is finite
  const double u2 = unit_interval(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

std::string number(double x) { return Json(x).dump(); }

std::string kind_name(Kind kind) {
  switch (kind) {
    case Kind::kGrid:
      return "grid_search";
    case Kind::kChoice:
      return "choice";
    case Kind::kUniform:
      return "uniform";
    case Kind::kQUniform:
      return "quniform";
    case Kind::kLogUniform:
      return "loguniform";
    case Kind::kQLogUniform:
      return "qloguniform";
    case Kind::kRandInt:
      return "randint";
    case Kind::kQRandInt:
      return "qrandint";
    case Kind::kRandn:
      return "randn";
    case Kind::kQRandn:
      return "qrandn";
    case Kind::kSampleFrom:
      return "sample_from";
  }
  return "unknown";
}

Kind kind_from_name(const std::string& name) {
  for (Kind k : {Kind::kGrid, Kind::kChoice, Kind::kUniform, Kind::kQUniform, Kind::kLogUniform, Kind::kQLogUniform,
                 Kind::kRandInt, Kind::kQRandInt, Kind::kRandn, Kind::kQRandn, Kind::kSampleFrom}) {
    if (kind_name(k) == name) return k;
  }
  throw Error("search space: unknown domain kind \"" + name +
              "\" (expected grid_search, choice, uniform, quniform, loguniform, qloguniform, "
              "randint, qrandint, randn, qrandn or sample_from)");
}

bool is_quantised(Kind kind) {
  return kind == Kind::kQUniform || kind == Kind::kQLogUniform || kind == Kind::kQRandInt || kind == Kind::kQRandn;
}

// k * q, written as the decimal a user expects (7 * 0.05 gives 0.35, not
// 0.35000000000000003) when q has few decimal digits.
double multiple_of(double k, double q) {
  double scale = 1;
  for (int digits = 0; digits <= 12; ++digits, scale *= 10) {
    const double scaled = q * scale;
    const double whole = std::round(scaled);
    if (whole != 0 && std::abs(scaled - whole) <= 1e-9 * std::abs(scaled)) {
      const double numerator = k * whole;
      if (std::abs(numerator) < 0x1.0p53) return numerator / scale;
      break;
    }
  }
  return k * q;
}

// The multiples of q a bounded q-form may produce: k * q for k in [first, last].
double first_multiple(const Domain& d) { return std::ceil(d.low / d.q - 1e-9); }
double last_multiple(const Domain& d) { return std::floor(d.high / d.q + 1e-9); }

// A value on the domain's own scale made into one the domain can produce.
Json onto_domain(const Domain& d, double v) {
  switch (d.kind) {
    case Kind::kUniform:
    case Kind::kLogUniform:
      return std::clamp(v, d.low, d.high);
    case Kind::kQUniform:
    case Kind::kQLogUniform:
      return multiple_of(std::clamp(std::round(v / d.q), first_multiple(d), last_multiple(d)), d.q);
    case Kind::kRandInt:
      return static_cast<int64_t>(std::clamp(std::round(v), d.low, d.high - 1));
    case Kind::kQRandInt:
      return static_cast<int64_t>(std::clamp(std::round(v / d.q), first_multiple(d), last_multiple(d)) * d.q);
    case Kind::kRandn:
      return v;
    case Kind::kQRandn:
      return multiple_of(std::round(v / d.q), d.q);
    default:
      break;
  }
  throw Error("search space: a " + kind_name(d.kind) + " domain has no numeric values");
}

[[noreturn]] void invalid(const std::string& path, const Domain& d, const std::string& why) {
  std::string bounds;
  switch (d.kind) {
    case Kind::kGrid:
    case Kind::kChoice:
    case Kind::kSampleFrom:
      break;
    case Kind::kRandn:
    case Kind::kQRandn:
      bounds = "(mean=" + number(d.low) + ", sd=" + number(d.high);
      if (d.kind == Kind::kQRandn) bounds += ", q=" + number(d.q);
      bounds += ")";
      break;
    default:
      bounds = "(low=" + number(d.low) + ", high=" + number(d.high);
      if (is_quantised(d.kind)) bounds += ", q=" + number(d.q);
      bounds += ")";
  }
  throw Error("search space: \"" + path + "\" is " + kind_name(d.kind) + bounds + ": " + why);
}

bool is_whole(double x) { return std::isfinite(x) && x == std::trunc(x); }

std::string join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "/" + key;
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> keys;
  size_t start = 0;
  for (;;) {
    const size_t slash = path.find('/', start);
    keys.push_back(path.substr(start, slash - start));
    if (slash == std::string::npos) return keys;
    start = slash + 1;
  }
}

const Json& field(const Json& j, const char* name, const std::string& what) {
  if (!j.is_object() || !j.contains(name)) {
    throw Error("search space: " + what + " has no \"" + name + "\" in " + j.dump());
  }
  return j.at(name);
}

double number_field(const Json& j, const char* name, const std::string& what) {
  const Json& v = field(j, name, what);
  if (!v.is_number()) throw Error("search space: " + what + "'s \"" + name + "\" is not a number: " + v.dump());
  return v.get<double>();
}

}  // namespace

Json Domain::sample(Rng& rng) const {
  switch (kind) {
    case Kind::kChoice:
      return values.at(below(rng, values.size()));
    case Kind::kUniform:
      return low + (high - low) * unit_interval(rng);
    case Kind::kLogUniform:
    case Kind::kQLogUniform: {
      const double v = std::exp(std::log(low) + (std::log(high) - std::log(low)) * unit_interval(rng));
      return onto_domain(*this, v);
    }
    case Kind::kQUniform:
      return onto_domain(*this, low + (high - low) * unit_interval(rng));
    case Kind::kRandInt:
      return static_cast<int64_t>(low) + static_cast<int64_t>(below(rng, static_cast<uint64_t>(high - low)));
    case Kind::kQRandInt: {
      // Uniform over the valid values, so the end multiples are not half as likely.
      const double first = first_multiple(*this);
      const auto count = static_cast<uint64_t>(last_multiple(*this) - first) + 1;
      return static_cast<int64_t>((first + static_cast<double>(below(rng, count))) * q);
    }
    case Kind::kRandn:
    case Kind::kQRandn:
      return onto_domain(*this, low + high * standard_normal(rng));
    case Kind::kGrid:
    case Kind::kSampleFrom:
      break;
  }
  throw Error("search space: a " + kind_name(kind) + " domain is not sampled (" +
              (kind == Kind::kGrid ? "grid values are assigned" : "its function is run by resolve") + ")");
}

void Domain::validate(const std::string& path) const {
  switch (kind) {
    case Kind::kGrid:
    case Kind::kChoice:
      if (values.empty()) invalid(path, *this, "needs at least one value");
      return;
    case Kind::kSampleFrom:
      if (!fn) invalid(path, *this, "has no function");
      return;
    case Kind::kRandn:
    case Kind::kQRandn:
      if (!std::isfinite(low)) invalid(path, *this, "the mean must be finite");
      if (!(high > 0) || !std::isfinite(high)) invalid(path, *this, "the sd must be positive");
      if (kind == Kind::kQRandn && !(q > 0)) invalid(path, *this, "q must be positive");
      return;
    default:
      break;
  }
  if (!std::isfinite(low) || !std::isfinite(high)) invalid(path, *this, "the bounds must be finite");
  if (!(low < high)) invalid(path, *this, "needs low < high");
  if (is_log()) {
    if (!(low > 0)) invalid(path, *this, "a log-scale domain needs low > 0");
    if (!(base > 0) || base == 1) invalid(path, *this, "the log base must be positive and not 1");
  }
  if (is_integer()) {
    if (!is_whole(low) || !is_whole(high)) invalid(path, *this, "the bounds must be integers");
    if (std::abs(low) > 0x1.0p53 || std::abs(high) > 0x1.0p53) invalid(path, *this, "the bounds are too large");
  }
  if (is_quantised(kind)) {
    if (!(q > 0) || !std::isfinite(q)) invalid(path, *this, "q must be positive");
    if (kind == Kind::kQRandInt && !is_whole(q)) invalid(path, *this, "q must be an integer");
    if (first_multiple(*this) > last_multiple(*this)) invalid(path, *this, "no multiple of q lies within the bounds");
  }
}

bool Domain::is_numeric() const { return !is_categorical() && kind != Kind::kSampleFrom; }

double Domain::to_internal(double x) const { return is_log() ? std::log(x) : x; }

double Domain::from_internal(double x) const { return is_log() ? std::exp(x) : x; }

Json Domain::snap(double x) const {
  if (!is_numeric()) throw Error("search space: snap needs a numeric domain, not " + kind_name(kind));
  if (std::isnan(x)) throw Error("search space: cannot snap NaN onto a " + kind_name(kind) + " domain");
  return onto_domain(*this, from_internal(x));
}

// The bounds are those of the values the domain can produce (randint(0, 10): [0, 9];
// quniform(0.1, 1, 0.25): [0.25, 1]), so a searcher that samples within them and snaps
// never lands outside the domain.
double Domain::internal_low() const {
  switch (kind) {
    case Kind::kRandn:
    case Kind::kQRandn:
      return low - 3 * high;
    case Kind::kQUniform:
    case Kind::kQLogUniform:
    case Kind::kQRandInt:
      return to_internal(multiple_of(first_multiple(*this), q));
    default:
      return to_internal(low);
  }
}

double Domain::internal_high() const {
  switch (kind) {
    case Kind::kRandn:
    case Kind::kQRandn:
      return low + 3 * high;
    case Kind::kQUniform:
    case Kind::kQLogUniform:
    case Kind::kQRandInt:
      return to_internal(multiple_of(last_multiple(*this), q));
    case Kind::kRandInt:
      return high - 1;
    default:
      return to_internal(high);
  }
}

Json Domain::to_json() const {
  Json j = {{"kind", kind_name(kind)}};
  switch (kind) {
    case Kind::kGrid:
    case Kind::kChoice:
      j["values"] = values;
      break;
    case Kind::kSampleFrom:
      break;
    case Kind::kRandn:
    case Kind::kQRandn:
      j["mean"] = low;
      j["sd"] = high;
      break;
    case Kind::kRandInt:
    case Kind::kQRandInt:
      j["low"] = static_cast<int64_t>(low);
      j["high"] = static_cast<int64_t>(high);
      break;
    default:
      j["low"] = low;
      j["high"] = high;
  }
  if (kind == Kind::kQRandInt) {
    j["q"] = static_cast<int64_t>(q);
  } else if (is_quantised(kind)) {
    j["q"] = q;
  }
  if (is_log()) j["base"] = base;
  return j;
}

Domain Domain::from_json(const Json& j) {
  const Json& kind_json = field(j, "kind", "a domain");
  if (!kind_json.is_string()) throw Error("search space: a domain's \"kind\" is not a string: " + j.dump());
  Domain d;
  d.kind = kind_from_name(kind_json.get<std::string>());
  const std::string what = "a " + kind_name(d.kind) + " domain";
  switch (d.kind) {
    case Kind::kSampleFrom:
      throw Error(
          "search space: a sample_from domain cannot be restored from JSON (its function is not "
          "saved): give the search space again");
    case Kind::kGrid:
    case Kind::kChoice: {
      const Json& values = field(j, "values", what);
      if (!values.is_array()) throw Error("search space: " + what + "'s \"values\" is not a list: " + j.dump());
      d.values.assign(values.begin(), values.end());
      return d;
    }
    case Kind::kRandn:
    case Kind::kQRandn:
      d.low = number_field(j, "mean", what);
      d.high = number_field(j, "sd", what);
      break;
    default:
      d.low = number_field(j, "low", what);
      d.high = number_field(j, "high", what);
  }
  if (is_quantised(d.kind)) d.q = number_field(j, "q", what);
  if (d.is_log() && j.contains("base")) d.base = number_field(j, "base", what);
  return d;
}

Domain grid_search(std::vector<Json> values) {
  Domain d;
  d.kind = Kind::kGrid;
  d.values = std::move(values);
  return d;
}

Domain choice(std::vector<Json> values) {
  Domain d;
  d.kind = Kind::kChoice;
  d.values = std::move(values);
  return d;
}

namespace {
Domain bounded(Kind kind, double low, double high, double q = 0, double base = 10) {
  Domain d;
  d.kind = kind;
  d.low = low;
  d.high = high;
  d.q = q;
  d.base = base;
  return d;
}
}  // namespace

Domain uniform(double low, double high) { return bounded(Kind::kUniform, low, high); }
Domain quniform(double low, double high, double q) { return bounded(Kind::kQUniform, low, high, q); }
Domain loguniform(double low, double high, double base) { return bounded(Kind::kLogUniform, low, high, 0, base); }
Domain qloguniform(double low, double high, double q, double base) {
  return bounded(Kind::kQLogUniform, low, high, q, base);
}
Domain randint(int64_t low, int64_t high) {
  return bounded(Kind::kRandInt, static_cast<double>(low), static_cast<double>(high));
}
Domain qrandint(int64_t low, int64_t high, int64_t q) {
  return bounded(Kind::kQRandInt, static_cast<double>(low), static_cast<double>(high), static_cast<double>(q));
}
Domain randn(double mean, double sd) { return bounded(Kind::kRandn, mean, sd); }
Domain qrandn(double mean, double sd, double q) { return bounded(Kind::kQRandn, mean, sd, q); }

Domain sample_from(std::function<Json(const Json& config)> fn) {
  Domain d;
  d.kind = Kind::kSampleFrom;
  d.fn = std::move(fn);
  return d;
}

ParamSpace::ParamSpace(std::initializer_list<Entry> entries) : entries_(entries) {}

ParamSpace::ParamSpace(std::vector<Entry> entries) : entries_(std::move(entries)) {}

void ParamSpace::set(const std::string& key, Node node) {
  for (auto& [k, n] : entries_) {
    if (k == key) {
      n = std::move(node);
      return;
    }
  }
  entries_.emplace_back(key, std::move(node));
}

namespace {
void collect_domains(const ParamSpace& space, const std::string& prefix,
                     std::vector<std::pair<std::string, const Domain*>>& out) {
  for (const auto& [key, node] : space.entries()) {
    if (node.kind() == ParamSpace::Node::Kind::kDomain) {
      out.emplace_back(join(prefix, key), &node.domain());
    } else if (node.kind() == ParamSpace::Node::Kind::kSpace) {
      collect_domains(node.space(), join(prefix, key), out);
    }
  }
}

void validate_space(const ParamSpace& space, const std::string& prefix) {
  std::set<std::string> seen;
  for (const auto& [key, node] : space.entries()) {
    const std::string path = join(prefix, key);
    if (key.empty()) {
      throw Error("search space: an empty key" + (prefix.empty() ? std::string() : " in \"" + prefix + "\""));
    }
    if (key.find('/') != std::string::npos) {
      throw Error("search space: key \"" + path + "\" contains '/', which separates the keys of nested spaces");
    }
    if (!seen.insert(key).second) throw Error("search space: key \"" + path + "\" is given twice");
    if (node.kind() == ParamSpace::Node::Kind::kDomain) node.domain().validate(path);
    if (node.kind() == ParamSpace::Node::Kind::kSpace) validate_space(node.space(), path);
  }
}
}  // namespace

std::vector<std::pair<std::string, const Domain*>> ParamSpace::domains() const {
  std::vector<std::pair<std::string, const Domain*>> out;
  collect_domains(*this, "", out);
  return out;
}

const Domain* ParamSpace::find(const std::string& path) const {
  const ParamSpace* space = this;
  const std::vector<std::string> keys = split_path(path);
  for (size_t i = 0; i < keys.size(); ++i) {
    const Node* found = nullptr;
    for (const auto& [key, node] : space->entries_) {
      if (key == keys[i]) found = &node;
    }
    if (found == nullptr) return nullptr;
    const bool last = i + 1 == keys.size();
    if (last) return found->kind() == Node::Kind::kDomain ? &found->domain() : nullptr;
    if (found->kind() != Node::Kind::kSpace) return nullptr;
    space = &found->space();
  }
  return nullptr;
}

void ParamSpace::validate() const { validate_space(*this, ""); }

bool ParamSpace::has_grid() const {
  for (const auto& [path, d] : domains()) {
    if (d->kind == Kind::kGrid) return true;
  }
  return false;
}

bool ParamSpace::has_sample_from() const {
  for (const auto& [path, d] : domains()) {
    if (d->kind == Kind::kSampleFrom) return true;
  }
  return false;
}

std::vector<std::map<std::string, Json>> ParamSpace::grid_points() const {
  std::vector<std::map<std::string, Json>> points(1);
  for (const auto& [path, d] : domains()) {
    if (d->kind != Kind::kGrid) continue;
    // Extending every point by each value of the next grid keeps the earlier grids
    // varying slowest.
    std::vector<std::map<std::string, Json>> extended;
    extended.reserve(points.size() * d->values.size());
    for (const auto& point : points) {
      for (const Json& value : d->values) {
        extended.push_back(point);
        extended.back()[path] = value;
      }
    }
    points = std::move(extended);
  }
  return points;
}

namespace {
struct Pending {
  std::string path;
  const Domain* domain;
};

Json resolve_space(const ParamSpace& space, const std::string& prefix, const std::map<std::string, Json>& assigned,
                   Rng& rng, std::vector<Pending>& sample_froms) {
  Json config = Json::object();
  for (const auto& [key, node] : space.entries()) {
    const std::string path = join(prefix, key);
    switch (node.kind()) {
      case ParamSpace::Node::Kind::kConstant:
        config[key] = node.constant();
        break;
      case ParamSpace::Node::Kind::kSpace:
        config[key] = resolve_space(node.space(), path, assigned, rng, sample_froms);
        break;
      case ParamSpace::Node::Kind::kDomain: {
        const Domain& d = node.domain();
        if (auto it = assigned.find(path); it != assigned.end()) {
          config[key] = it->second;
        } else if (d.kind == Kind::kSampleFrom) {
          sample_froms.push_back({path, &d});
        } else if (d.kind == Kind::kGrid) {
          throw Error("search space: grid_search \"" + path +
                      "\" has no assigned value (grid values come from grid_points)");
        } else {
          config[key] = d.sample(rng);
        }
        break;
      }
    }
  }
  return config;
}
}  // namespace

Json ParamSpace::resolve(const std::map<std::string, Json>& assigned, Rng& rng) const {
  std::vector<Pending> sample_froms;
  Json config = resolve_space(*this, "", assigned, rng, sample_froms);
  for (const auto& [path, value] : assigned) {
    if (find(path) == nullptr) assign(config, path, value);
  }
  for (const Pending& p : sample_froms) {
    if (!p.domain->fn) throw Error("search space: sample_from \"" + p.path + "\" has no function");
    Json value;
    try {
      value = p.domain->fn(config);
    } catch (const std::exception& e) {
      throw Error("search space: sample_from \"" + p.path + "\" threw: " + e.what());
    }
    assign(config, p.path, std::move(value));
  }
  return config;
}

const Json* ParamSpace::lookup(const Json& config, const std::string& path) {
  const Json* at = &config;
  for (const std::string& key : split_path(path)) {
    if (!at->is_object()) return nullptr;
    auto it = at->find(key);
    if (it == at->end()) return nullptr;
    at = &*it;
  }
  return at;
}

void ParamSpace::assign(Json& config, const std::string& path, Json value) {
  Json* at = &config;
  std::string walked;
  for (const std::string& key : split_path(path)) {
    if (at->is_null()) *at = Json::object();
    if (!at->is_object()) {
      throw Error("search space: cannot set \"" + path + "\": \"" + walked + "\" holds " + at->dump() +
                  ", not an object");
    }
    walked = join(walked, key);
    at = &(*at)[key];
  }
  *at = std::move(value);
}

namespace {
void flatten_into(const Json& config, const std::string& prefix, std::map<std::string, Json>& out) {
  for (const auto& [key, value] : config.items()) {
    const std::string path = join(prefix, key);
    // An empty object stays a value of its own, so assign() rebuilds it.
    if (value.is_object() && !value.empty()) {
      flatten_into(value, path, out);
    } else {
      out[path] = value;
    }
  }
}
}  // namespace

std::map<std::string, Json> ParamSpace::flatten(const Json& config) {
  if (!config.is_object()) {
    throw Error("search space: flatten needs a JSON object (a config), got " + std::string(config.type_name()) + ": " +
                config.dump());
  }
  std::map<std::string, Json> out;
  flatten_into(config, "", out);
  return out;
}

// A list of entries rather than an object, because a JSON object would lose the
// declaration order that draws, sample_from and grids follow.
Json ParamSpace::to_json() const {
  Json entries = Json::array();
  for (const auto& [key, node] : entries_) {
    Json entry = {{"key", key}};
    switch (node.kind()) {
      case Node::Kind::kConstant:
        entry["constant"] = node.constant();
        break;
      case Node::Kind::kDomain:
        entry["domain"] = node.domain().to_json();
        break;
      case Node::Kind::kSpace:
        entry["space"] = node.space().to_json();
        break;
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

namespace {
ParamSpace space_from_json(const Json& j, const std::string& prefix) {
  if (!j.is_array()) {
    throw Error("search space" + (prefix.empty() ? std::string() : " \"" + prefix + "\"") +
                ": expected a list of entries, got " + j.dump());
  }
  std::vector<ParamSpace::Entry> entries;
  for (const Json& entry : j) {
    if (!entry.is_object() || !entry.contains("key") || !entry["key"].is_string()) {
      throw Error("search space: an entry has no \"key\": " + entry.dump());
    }
    const auto key = entry["key"].get<std::string>();
    const std::string path = join(prefix, key);
    if (entry.contains("constant")) {
      entries.emplace_back(key, ParamSpace::Node::json(entry["constant"]));
    } else if (entry.contains("space")) {
      entries.emplace_back(key, space_from_json(entry["space"], path));
    } else if (entry.contains("domain")) {
      try {
        entries.emplace_back(key, Domain::from_json(entry["domain"]));
      } catch (const Error& e) {
        throw Error("search space entry \"" + path + "\": " + e.what());
      }
    } else {
      throw Error("search space entry \"" + path + "\" has no \"constant\", \"domain\" or \"space\": " + entry.dump());
    }
  }
  return ParamSpace(std::move(entries));
}
}  // namespace

ParamSpace ParamSpace::from_json(const Json& j) { return space_from_json(j, ""); }

}  // namespace gantry::tune
