#pragma once

// The Parzen-estimator machinery shared by TPE and BOHB: the parameters a model sees,
// kernel densities over them, and TPE's proposal step (split the observations into good
// and bad, draw candidates from the good density, keep the one with the best ratio).

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "gantry/tune/search_space.h"
#include "gantry/tune/searcher.h"

namespace gantry::tune::detail {

/// A point in the model's coordinates, one entry per `ParzenParam`: a numeric value in
/// its domain's internal scale (log for the log forms), or a choice's index. NaN where a
/// config has no usable value for that parameter.
using ParzenPoint = std::vector<double>;

/// One hyperparameter a Parzen estimator models: a numeric domain (truncated to its
/// bounds in internal scale) or a choice. sample_from domains are not modelled (resolve
/// computes them) nor are grid domains (GridCycle assigns them).
struct ParzenParam {
  std::string path;
  const Domain* domain = nullptr;  ///< not owned: the space's, which outlives the model
  bool categorical = false;
  std::size_t num_categories = 0;  ///< choices only
  /// Internal-scale bounds of the densities; for quantised and integer domains they
  /// reach half a step beyond the extreme values, so that every value owns a whole bin.
  double low = 0;
  double high = 0;
  /// Quantum of the domain's values in its own scale (1 for randint); 0: continuous.
  double step = 0;
  /// The prior component: the centre of the bounds with the whole range as its spread,
  /// or the domain's own normal for randn/qrandn.
  double prior_mu = 0;
  double prior_sigma = 1;

  /// `value` (a config's) in model coordinates; NaN when it is not a value of this
  /// parameter (missing, a string for a number, a choice not in the list).
  double encode(const Json& value) const;
  /// A model coordinate as the config value it stands for (snapped onto the domain).
  Json decode(double x) const;
  /// `x` moved onto a value the domain can produce, still in model coordinates.
  double round(double x) const;
  /// The internal-scale interval of values that `round` maps onto the value at `x`
  /// (quantised and integer domains only).
  std::pair<double, double> bin(double x) const;
};

/// The modelled parameters of `space`, in its declaration order.
std::vector<ParzenParam> parzen_params(const ParamSpace& space);

/// Grid domains in a model-based searcher: not modelled, but tried as the default
/// searcher tries them. Suggestion k takes the grid's combination k mod size(), so
/// num_samples × size() suggestions give every combination num_samples times, and the
/// model chooses the other values.
class GridCycle {
 public:
  GridCycle() = default;
  explicit GridCycle(const ParamSpace& space) : points_(space.grid_points()) {}
  /// Combinations in the grid (1 without one).
  int size() const { return static_cast<int>(points_.size()); }
  /// `model`'s values with suggestion `k`'s grid values added, for ParamSpace::resolve.
  std::map<std::string, Json> assigned(int k, std::map<std::string, Json> model = {}) const {
    if (!points_.empty()) {
      for (const auto& [path, value] : points_[static_cast<std::size_t>(k) % points_.size()]) model[path] = value;
    }
    return model;
  }

 private:
  std::vector<std::map<std::string, Json>> points_;
};

/// `config` (nested, as a trial ran it) in the coordinates of `params`.
ParzenPoint encode_config(const std::vector<ParzenParam>& params, const Json& config);

/// The values of `point` by path, for ParamSpace::resolve's `assigned`.
std::map<std::string, Json> decode_point(const std::vector<ParzenParam>& params, const ParzenPoint& point);

/// A mixture density over some parameters: one kernel per observed point plus one prior
/// kernel over the whole domain. Numeric dimensions are Gaussians truncated to the
/// parameter's bounds (probability mass over a value's bin for quantised and integer
/// domains); choices put most of a kernel's mass on the observed category and spread
/// `prior_weight` over all of them. Immutable once built.
class ParzenEstimator {
 public:
  /// `params` are the estimator's dimensions (not owned; they outlive it); each point has
  /// one coordinate per param, NaN for a missing value (that kernel is the prior there).
  /// Every observed point weighs 1 and the prior `prior_weight` (> 0).
  ///
  /// A kernel's width in a dimension is the larger distance from its centre to the
  /// neighbouring centres there (the prior's among them; Bergstra et al.'s rule): narrow
  /// where observations crowd, wide where they are sparse. It is kept between
  /// range / min(100, n + 1) and the range. Joint kernels use the same rule in each
  /// dimension: on the search-quality benchmark it beat Scott's rule (one width per
  /// dimension, 0.2 · range · n^(-1/(d+4))) on all three functions.
  ParzenEstimator(std::vector<const ParzenParam*> params, const std::vector<const ParzenPoint*>& points,
                  double prior_weight);

  /// A draw from the mixture: one kernel, then every dimension from it, rounded onto
  /// the domains.
  ParzenPoint sample(Rng& rng) const;
  /// The log density (log mass for discrete dimensions) of a point `sample` can return.
  double log_density(const ParzenPoint& x) const;

 private:
  struct Kernel {
    double log_weight = 0;
    /// Per dimension: the centre (a category index for choices; NaN: the prior's), the
    /// width, and the log of the mass the untruncated Gaussian puts inside the bounds.
    std::vector<double> mu;
    std::vector<double> sigma;
    std::vector<double> log_inside;
  };

  double log_kernel(const Kernel& kernel, std::size_t dim, double x) const;

  std::vector<const ParzenParam*> params_;
  std::vector<Kernel> kernels_;
  double prior_weight_;
};

/// How many of `n` observations TPE counts as good: ceil(gamma · n), at most `cap`, at
/// least one when there is any.
std::size_t good_count(std::size_t n, double gamma, int cap);

/// TPE's proposal: fits l on `good` and g on `bad`, draws `options.n_ei_candidates` from
/// l and returns the one with the largest log l(x) − log g(x) (the first on ties). With
/// `options.multivariate`, one joint estimator over every parameter; otherwise each
/// parameter is proposed on its own from its own marginal estimators. Deterministic
/// given `rng`'s state.
ParzenPoint propose(const std::vector<ParzenParam>& params, const std::vector<const ParzenPoint*>& good,
                    const std::vector<const ParzenPoint*>& bad, const TPEOptions& options, Rng& rng);

/// Throws gantry::Error naming `searcher` and the option when `options` are out of range.
void validate_tpe_options(const TPEOptions& options, const std::string& searcher);
/// TPEOptions as JSON (seed included when set) and back; missing keys keep their defaults,
/// so TPE's spec and the `tpe` entry of BOHB's share one form.
Json tpe_options_to_json(const TPEOptions& options);
TPEOptions tpe_options_from_json(const Json& j);

/// A uniform draw in [0, 1) from 53 bits of `rng`: the same on every standard library,
/// so a seed replays the same sweep wherever it is restored.
double uniform01(Rng& rng);

}  // namespace gantry::tune::detail
