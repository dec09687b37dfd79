#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gantry/config.h"

namespace gantry::tune {

using Json = gantry::Json;
using Config = gantry::Config;

/// The random number generator every searcher and scheduler draws from (seeded: a seed
/// makes a sweep repeatable).
using Rng = std::mt19937_64;

/// Where one hyperparameter's values come from: a distribution to sample, a list to grid
/// over, or a function of the other values. Built with the functions below
/// (`tune::loguniform(1e-4, 1e-1)`), checked by `ParamSpace::validate`.
class Domain {
 public:
  enum class Kind {
    kGrid,         ///< every value of `values`, one trial each (the grid's cross product)
    kChoice,       ///< one of `values`, uniformly
    kUniform,      ///< [low, high)
    kQUniform,     ///< uniform rounded to a multiple of q, kept within [low, high]
    kLogUniform,   ///< exp(uniform(log low, log high)), 0 < low < high
    kQLogUniform,  ///< loguniform rounded to a multiple of q
    kRandInt,      ///< an integer in [low, high)
    kQRandInt,     ///< an integer in [low, high] that is a multiple of q
    kRandn,        ///< normal(mean = low, sd = high)
    kQRandn,       ///< randn rounded to a multiple of q
    kSampleFrom,   ///< fn(config resolved so far), run in the driver
  };

  Kind kind = Kind::kChoice;
  double low = 0;   ///< lower bound, or the mean of kRandn/kQRandn
  double high = 0;  ///< upper bound, or the standard deviation of kRandn/kQRandn
  double q = 0;     ///< quantum of the q-forms (0: none)
  double base = 10; ///< log base of the log forms (the values do not depend on it)
  std::vector<Json> values{};  ///< kGrid, kChoice
  /// kSampleFrom: given the trial's config with every other value already resolved.
  std::function<Json(const Json& config)> fn{};

  /// Draws one value (a JSON number: integer for the int forms). Not for kGrid or
  /// kSampleFrom. Needs a valid domain.
  Json sample(Rng& rng) const;
  /// Throws gantry::Error naming `path` and the bounds when the domain is invalid
  /// (low >= high, a non-positive log bound, q <= 0 where one is needed, an empty list,
  /// sd <= 0, a q-form whose range holds no multiple of q).
  void validate(const std::string& path) const;

  /// Numeric domains only: `x` mapped to the searcher's working scale (log for the log
  /// forms) and back, and rounding onto the domain (quantised, clamped, integral).
  bool is_numeric() const;
  bool is_log() const { return kind == Kind::kLogUniform || kind == Kind::kQLogUniform; }
  bool is_integer() const { return kind == Kind::kRandInt || kind == Kind::kQRandInt; }
  bool is_categorical() const { return kind == Kind::kChoice || kind == Kind::kGrid; }
  double to_internal(double x) const;
  double from_internal(double x) const;
  /// The numeric value nearest to `x` that this domain can produce, as JSON.
  Json snap(double x) const;
  /// For numeric bounded domains, the internal-scale bounds of the values the domain can
  /// produce (randint(0, 10): [0, 9]; a q-form: its first and last multiple of q within
  /// [low, high]); for kRandn, mean ± 3 sd.
  double internal_low() const;
  double internal_high() const;

  /// A JSON description (kind, bounds, values); kSampleFrom has no description of its
  /// function, so a space that holds one must be given again to restore a sweep.
  Json to_json() const;
  static Domain from_json(const Json& j);
};

/// Grid search: one trial per value (and per combination with the other grids), in order.
Domain grid_search(std::vector<Json> values);
/// One of `values`, uniformly at random.
Domain choice(std::vector<Json> values);
Domain uniform(double low, double high);
Domain quniform(double low, double high, double q);
Domain loguniform(double low, double high, double base = 10);
Domain qloguniform(double low, double high, double q, double base = 10);
/// An integer in [low, high) (Ray's convention: high excluded).
Domain randint(int64_t low, int64_t high);
/// An integer in [low, high] (high included) that is a multiple of q.
Domain qrandint(int64_t low, int64_t high, int64_t q = 1);
Domain randn(double mean = 0, double sd = 1);
Domain qrandn(double mean, double sd, double q);
/// A value computed in the driver from the trial's other values, after they are drawn:
///
///     {"width", tune::choice({64, 128})},
///     {"hidden", tune::sample_from([](const tune::Json& c) { return c["width"].get<int>() * 2; })}
Domain sample_from(std::function<Json(const Json& config)> fn);

class ParamSpace;

/// One entry's value in a ParamSpace: a constant, a domain or a nested space. Written as
/// ParamSpace::Node; it converts from each, so a space reads as a list of pairs.
class SpaceNode {
 public:
  enum class Kind { kConstant, kDomain, kSpace };

  SpaceNode(Domain d) : kind_(Kind::kDomain), domain_(std::make_shared<Domain>(std::move(d))) {}  // NOLINT
  SpaceNode(std::initializer_list<std::pair<std::string, SpaceNode>> nested);  // NOLINT: a nested space
  SpaceNode(ParamSpace nested);                                                // NOLINT
  template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
  SpaceNode(T value) : kind_(Kind::kConstant), constant_(value) {}  // NOLINT
  SpaceNode(const char* value) : kind_(Kind::kConstant), constant_(value) {}         // NOLINT
  SpaceNode(std::string value) : kind_(Kind::kConstant), constant_(std::move(value)) {}  // NOLINT
  /// Any JSON value as a constant (a list, an object taken as a value).
  static SpaceNode json(Json value) {
    SpaceNode n(0);
    n.constant_ = std::move(value);
    return n;
  }

  Kind kind() const { return kind_; }
  const Json& constant() const { return constant_; }
  const Domain& domain() const { return *domain_; }
  const ParamSpace& space() const { return *space_; }

 private:
  Kind kind_;
  Json constant_{};
  std::shared_ptr<const Domain> domain_;
  std::shared_ptr<const ParamSpace> space_;
};

/// A search space: named constants, domains and nested spaces, in declaration order.
///
///     tune::ParamSpace space = {{"lr", tune::loguniform(1e-4, 1e-1)},
///                               {"epochs", 10},
///                               {"optimizer", {{"momentum", tune::uniform(0.8, 0.99)}}}};
///
/// A trial's config mirrors it: constants as given, each domain replaced by a value,
/// nested spaces as JSON objects. Searchers see each domain under its path, the keys
/// joined by '/' ("optimizer/momentum"), so a key may not contain '/'.
class ParamSpace {
 public:
  using Node = SpaceNode;
  using Entry = std::pair<std::string, Node>;

  ParamSpace() = default;
  ParamSpace(std::initializer_list<Entry> entries);
  explicit ParamSpace(std::vector<Entry> entries);

  const std::vector<Entry>& entries() const { return entries_; }
  bool empty() const { return entries_.empty(); }
  /// Adds or replaces `key`.
  void set(const std::string& key, Node node);

  /// Every domain with its path, depth first in declaration order.
  std::vector<std::pair<std::string, const Domain*>> domains() const;
  /// The domain at `path`, or null.
  const Domain* find(const std::string& path) const;
  /// Throws gantry::Error naming the first invalid entry (a bad domain, a key with '/',
  /// a duplicate key, an empty key).
  void validate() const;
  bool has_grid() const;
  bool has_sample_from() const;
  /// The cross product of the grid domains: one map (path -> value) per combination,
  /// the first grid varying slowest. One empty map when there is no grid.
  std::vector<std::map<std::string, Json>> grid_points() const;
  /// A trial's config: `assigned` values (by path) where given, the rest drawn from
  /// `rng` in declaration order, then every sample_from in declaration order. Grid
  /// domains must be assigned. A path in `assigned` that is not a domain of the space
  /// adds or replaces that value (points_to_evaluate may set constants).
  Json resolve(const std::map<std::string, Json>& assigned, Rng& rng) const;
  /// The value at `path` ("a/b") in a config, or null.
  static const Json* lookup(const Json& config, const std::string& path);
  /// Sets the value at `path` in a config, creating objects on the way.
  static void assign(Json& config, const std::string& path, Json value);
  /// The flat path -> value map of a (possibly nested) config: the inverse of resolve's
  /// nesting, for points_to_evaluate given as nested objects.
  static std::map<std::string, Json> flatten(const Json& config);

  Json to_json() const;
  static ParamSpace from_json(const Json& j);

 private:
  std::vector<Entry> entries_;
};

inline SpaceNode::SpaceNode(std::initializer_list<std::pair<std::string, SpaceNode>> nested)
    : kind_(Kind::kSpace), space_(std::make_shared<ParamSpace>(nested)) {}
inline SpaceNode::SpaceNode(ParamSpace nested)
    : kind_(Kind::kSpace), space_(std::make_shared<ParamSpace>(std::move(nested))) {}

}  // namespace gantry::tune
