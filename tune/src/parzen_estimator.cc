#include "parzen_estimator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <utility>

namespace gantry::tune::detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kLogSqrt2Pi = 0.91893853320467274178;  // log(sqrt(2 pi))
constexpr double kSqrt1_2 = 0.70710678118654752440;

double log_normal_pdf(double x, double mu, double sigma) {
  double z = (x - mu) / sigma;
  return -0.5 * z * z - std::log(sigma) - kLogSqrt2Pi;
}

// log P(a <= X <= b) for X ~ N(mu, sigma). The difference of CDFs is taken on the side of
// the tail the interval lies in, where erfc keeps its relative precision.
double log_normal_mass(double a, double b, double mu, double sigma) {
  double za = (a - mu) / sigma;
  double zb = (b - mu) / sigma;
  double mass;
  if (za >= 0) {
    mass = 0.5 * (std::erfc(za * kSqrt1_2) - std::erfc(zb * kSqrt1_2));
  } else if (zb <= 0) {
    mass = 0.5 * (std::erfc(-zb * kSqrt1_2) - std::erfc(-za * kSqrt1_2));
  } else {
    mass = 1 - 0.5 * std::erfc(-za * kSqrt1_2) - 0.5 * std::erfc(zb * kSqrt1_2);
  }
  if (mass > 0) return std::log(mass);
  // Far in a tail both CDFs underflow; the density at the middle times the width is then
  // as good an answer as any, and stays comparable between the two estimators.
  if (b > a) return log_normal_pdf(0.5 * (a + b), mu, sigma) + std::log(b - a);
  return kNegInf;
}

double log_sum_exp(const std::vector<double>& terms) {
  double top = kNegInf;
  for (double t : terms) top = std::max(top, t);
  if (top == kNegInf) return kNegInf;
  double sum = 0;
  for (double t : terms) sum += std::exp(t - top);
  return top + std::log(sum);
}

// Box–Muller on our own uniform draws, for the same reason as uniform01.
double standard_normal(Rng& rng) {
  double u1 = uniform01(rng);
  double u2 = uniform01(rng);
  return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

double quantum(const Domain& d) {
  switch (d.kind) {
    case Domain::Kind::kQUniform:
    case Domain::Kind::kQLogUniform:
    case Domain::Kind::kQRandInt:
    case Domain::Kind::kQRandn:
      return d.q;
    case Domain::Kind::kRandInt:
      return d.q > 0 ? d.q : 1;
    default:
      return 0;
  }
}

ParzenParam make_param(const std::string& path, const Domain& d) {
  ParzenParam p;
  p.path = path;
  p.domain = &d;
  if (d.kind == Domain::Kind::kChoice) {
    p.categorical = true;
    p.num_categories = d.values.size();
    if (p.num_categories == 0) throw Error("tune: choice '" + path + "' has no values");
    return p;
  }
  p.step = quantum(d);
  double low = d.internal_low();
  double high = d.internal_high();
  if (p.step > 0) {
    double first = d.snap(low).get<double>();
    double last = d.snap(high).get<double>();
    double below = first - p.step / 2;
    // A log scale has no room for the half bin below a first value near zero.
    if (d.is_log() && below <= 0) below = first / 2;
    low = d.to_internal(below);
    high = d.to_internal(last + p.step / 2);
  }
  if (!(std::isfinite(low) && std::isfinite(high) && low < high)) {
    throw Error("tune: domain '" + path + "' has no range to model (internal bounds " + std::to_string(low) + ", " +
                std::to_string(high) + ")");
  }
  p.low = low;
  p.high = high;
  if (d.kind == Domain::Kind::kRandn || d.kind == Domain::Kind::kQRandn) {
    p.prior_mu = d.low;
    p.prior_sigma = d.high;
  } else {
    p.prior_mu = 0.5 * (low + high);
    p.prior_sigma = high - low;
  }
  return p;
}

}  // namespace

double uniform01(Rng& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

double ParzenParam::encode(const Json& value) const {
  if (categorical) {
    for (std::size_t i = 0; i < domain->values.size(); ++i) {
      if (domain->values[i] == value) return static_cast<double>(i);
    }
    return kNaN;
  }
  if (!value.is_number()) return kNaN;
  double v = value.get<double>();
  if (!std::isfinite(v) || (domain->is_log() && v <= 0)) return kNaN;
  return std::clamp(domain->to_internal(v), low, high);
}

Json ParzenParam::decode(double x) const {
  if (categorical) {
    auto i = static_cast<std::size_t>(std::clamp<double>(std::round(x), 0, static_cast<double>(num_categories - 1)));
    return domain->values[i];
  }
  return domain->snap(std::clamp(x, low, high));
}

double ParzenParam::round(double x) const {
  if (categorical) return std::clamp<double>(std::round(x), 0, static_cast<double>(num_categories - 1));
  x = std::clamp(x, low, high);
  if (step == 0) return x;
  return std::clamp(domain->to_internal(decode(x).get<double>()), low, high);
}

std::pair<double, double> ParzenParam::bin(double x) const {
  double v = domain->from_internal(x);
  double below = v - step / 2;
  double a = domain->is_log() && below <= 0 ? low : domain->to_internal(below);
  double b = domain->to_internal(v + step / 2);
  return {std::clamp(a, low, high), std::clamp(b, low, high)};
}

std::vector<ParzenParam> parzen_params(const ParamSpace& space) {
  std::vector<ParzenParam> params;
  for (const auto& [path, domain] : space.domains()) {
    if (domain->kind == Domain::Kind::kGrid || domain->kind == Domain::Kind::kSampleFrom) continue;
    params.push_back(make_param(path, *domain));
  }
  return params;
}

ParzenPoint encode_config(const std::vector<ParzenParam>& params, const Json& config) {
  ParzenPoint point(params.size(), kNaN);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Json* value = ParamSpace::lookup(config, params[i].path);
    if (value != nullptr) point[i] = params[i].encode(*value);
  }
  return point;
}

std::map<std::string, Json> decode_point(const std::vector<ParzenParam>& params, const ParzenPoint& point) {
  std::map<std::string, Json> assigned;
  for (std::size_t i = 0; i < params.size(); ++i) assigned[params[i].path] = params[i].decode(point[i]);
  return assigned;
}

ParzenEstimator::ParzenEstimator(std::vector<const ParzenParam*> params, const std::vector<const ParzenPoint*>& points,
                                 double prior_weight)
    : params_(std::move(params)), prior_weight_(prior_weight) {
  const std::size_t n = points.size();
  const std::size_t dims = params_.size();
  const double total = static_cast<double>(n) + prior_weight_;
  kernels_.resize(n + 1);  // the last is the prior
  for (std::size_t k = 0; k <= n; ++k) {
    Kernel& kernel = kernels_[k];
    kernel.log_weight = std::log((k < n ? 1.0 : prior_weight_) / total);
    kernel.mu.assign(dims, kNaN);
    kernel.sigma.assign(dims, kNaN);
    kernel.log_inside.assign(dims, 0);
    for (std::size_t d = 0; d < dims && k < n; ++d) kernel.mu[d] = (*points[k])[d];
  }

  for (std::size_t d = 0; d < dims; ++d) {
    const ParzenParam& param = *params_[d];
    if (param.categorical) continue;
    const double range = param.high - param.low;
    // Observations without a value here keep the prior's kernel in this dimension.
    std::vector<std::size_t> observed;
    for (std::size_t k = 0; k < n; ++k) {
      if (std::isnan(kernels_[k].mu[d])) {
        kernels_[k].mu[d] = param.prior_mu;
        kernels_[k].sigma[d] = param.prior_sigma;
      } else {
        observed.push_back(k);
      }
    }
    // The clip keeps a crowd of identical observations from collapsing to a spike, and
    // lets the kernels narrow as evidence accumulates.
    const double min_sigma = range / std::min(100.0, 1.0 + static_cast<double>(observed.size()));
    // Neighbours among the observed centres and the prior's (which is a centre too).
    std::vector<std::pair<double, std::size_t>> sorted;
    for (std::size_t k : observed) sorted.emplace_back(kernels_[k].mu[d], k);
    sorted.emplace_back(param.prior_mu, n);
    std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (std::size_t i = 0; i < sorted.size(); ++i) {
      if (sorted[i].second == n) continue;
      double gap = 0;
      if (i > 0) gap = std::max(gap, sorted[i].first - sorted[i - 1].first);
      if (i + 1 < sorted.size()) gap = std::max(gap, sorted[i + 1].first - sorted[i].first);
      kernels_[sorted[i].second].sigma[d] = std::clamp(gap, min_sigma, range);
    }
    kernels_[n].mu[d] = param.prior_mu;
    kernels_[n].sigma[d] = param.prior_sigma;
    for (Kernel& kernel : kernels_) {
      kernel.log_inside[d] = log_normal_mass(param.low, param.high, kernel.mu[d], kernel.sigma[d]);
    }
  }
}

double ParzenEstimator::log_kernel(const Kernel& kernel, std::size_t d, double x) const {
  const ParzenParam& param = *params_[d];
  const double categories = static_cast<double>(param.num_categories);
  if (std::isnan(kernel.mu[d])) return -std::log(categories);  // the prior over choices
  return std::log(((x == kernel.mu[d] ? 1.0 : 0.0) + prior_weight_ / categories) / (1.0 + prior_weight_));
}

ParzenPoint ParzenEstimator::sample(Rng& rng) const {
  double total = static_cast<double>(kernels_.size() - 1) + prior_weight_;
  double pick = uniform01(rng) * total;
  std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(pick), kernels_.size() - 1);
  const Kernel& kernel = kernels_[k];

  ParzenPoint x(params_.size());
  for (std::size_t d = 0; d < params_.size(); ++d) {
    const ParzenParam& param = *params_[d];
    if (param.categorical) {
      double u = uniform01(rng);
      double cumulative = 0;
      x[d] = static_cast<double>(param.num_categories - 1);
      for (std::size_t c = 0; c < param.num_categories; ++c) {
        cumulative += std::exp(log_kernel(kernel, d, static_cast<double>(c)));
        if (u < cumulative) {
          x[d] = static_cast<double>(c);
          break;
        }
      }
      continue;
    }
    // The centre lies within the bounds and the width is at most the range, so at least
    // a third of the Gaussian's mass is inside: rejection ends quickly.
    double value = kernel.mu[d];
    for (int attempt = 0; attempt < 100; ++attempt) {
      double draw = kernel.mu[d] + kernel.sigma[d] * standard_normal(rng);
      if (draw >= param.low && draw <= param.high) {
        value = draw;
        break;
      }
    }
    x[d] = param.round(value);
  }
  return x;
}

double ParzenEstimator::log_density(const ParzenPoint& x) const {
  // A discrete value's bin is the same for every kernel: find it once.
  std::vector<std::pair<double, double>> bins(params_.size());
  for (std::size_t d = 0; d < params_.size(); ++d) {
    if (!params_[d]->categorical && params_[d]->step > 0) bins[d] = params_[d]->bin(x[d]);
  }
  std::vector<double> terms;
  terms.reserve(kernels_.size());
  for (const Kernel& kernel : kernels_) {
    double lp = kernel.log_weight;
    for (std::size_t d = 0; d < params_.size(); ++d) {
      const ParzenParam& param = *params_[d];
      if (param.categorical) {
        lp += log_kernel(kernel, d, x[d]);
      } else if (param.step > 0) {
        lp += log_normal_mass(bins[d].first, bins[d].second, kernel.mu[d], kernel.sigma[d]) - kernel.log_inside[d];
      } else {
        lp += log_normal_pdf(x[d], kernel.mu[d], kernel.sigma[d]) - kernel.log_inside[d];
      }
    }
    terms.push_back(lp);
  }
  return log_sum_exp(terms);
}

std::size_t good_count(std::size_t n, double gamma, int cap) {
  if (n == 0) return 0;
  // The epsilon keeps 0.1 * 30 (3.0000000000000004 in binary) at 3.
  auto count = static_cast<std::size_t>(std::ceil(gamma * static_cast<double>(n) - 1e-9));
  count = std::min<std::size_t>(count, static_cast<std::size_t>(std::max(cap, 1)));
  return std::clamp<std::size_t>(count, 1, n);
}

namespace {

// The candidate of `l` with the best log l − log g; the first on ties.
ParzenPoint best_candidate(const ParzenEstimator& l, const ParzenEstimator& g, int candidates, Rng& rng) {
  ParzenPoint best;
  double best_score = kNegInf;
  for (int i = 0; i < candidates; ++i) {
    ParzenPoint x = l.sample(rng);
    double score = l.log_density(x) - g.log_density(x);
    if (best.empty() || score > best_score) {
      best = std::move(x);
      best_score = score;
    }
  }
  return best;
}

}  // namespace

ParzenPoint propose(const std::vector<ParzenParam>& params, const std::vector<const ParzenPoint*>& good,
                    const std::vector<const ParzenPoint*>& bad, const TPEOptions& options, Rng& rng) {
  if (options.multivariate) {
    std::vector<const ParzenParam*> all;
    for (const ParzenParam& p : params) all.push_back(&p);
    ParzenEstimator l(all, good, options.prior_weight);
    ParzenEstimator g(all, bad, options.prior_weight);
    return best_candidate(l, g, options.n_ei_candidates, rng);
  }
  ParzenPoint proposal(params.size());
  for (std::size_t d = 0; d < params.size(); ++d) {
    // This parameter's marginal: the observations that have a value for it.
    auto project = [d](const std::vector<const ParzenPoint*>& points) {
      std::vector<ParzenPoint> values;
      for (const ParzenPoint* p : points) {
        if (!std::isnan((*p)[d])) values.push_back({(*p)[d]});
      }
      return values;
    };
    std::vector<ParzenPoint> good_d = project(good);
    std::vector<ParzenPoint> bad_d = project(bad);
    auto pointers = [](const std::vector<ParzenPoint>& values) {
      std::vector<const ParzenPoint*> out;
      for (const ParzenPoint& v : values) out.push_back(&v);
      return out;
    };
    ParzenEstimator l({&params[d]}, pointers(good_d), options.prior_weight);
    ParzenEstimator g({&params[d]}, pointers(bad_d), options.prior_weight);
    proposal[d] = best_candidate(l, g, options.n_ei_candidates, rng)[0];
  }
  return proposal;
}

void validate_tpe_options(const TPEOptions& options, const std::string& searcher) {
  auto fail = [&](const std::string& what) { throw Error(searcher + ": " + what); };
  if (options.n_startup_trials < 0)
    fail("n_startup_trials must be >= 0, not " + std::to_string(options.n_startup_trials));
  if (options.n_ei_candidates < 1) fail("n_ei_candidates must be >= 1, not " + std::to_string(options.n_ei_candidates));
  if (!(options.gamma > 0 && options.gamma <= 1)) fail("gamma must be in (0, 1], not " + std::to_string(options.gamma));
  if (options.gamma_cap < 1) fail("gamma_cap must be >= 1, not " + std::to_string(options.gamma_cap));
  if (!(options.prior_weight > 0 && std::isfinite(options.prior_weight))) {
    fail("prior_weight must be > 0 (the prior keeps both densities positive over the whole domain), not " +
         std::to_string(options.prior_weight));
  }
}

Json tpe_options_to_json(const TPEOptions& options) {
  Json j = {{"n_startup_trials", options.n_startup_trials},
            {"n_ei_candidates", options.n_ei_candidates},
            {"gamma", options.gamma},
            {"gamma_cap", options.gamma_cap},
            {"multivariate", options.multivariate},
            {"constant_liar", options.constant_liar},
            {"prior_weight", options.prior_weight}};
  if (options.seed) j["seed"] = *options.seed;
  return j;
}

TPEOptions tpe_options_from_json(const Json& j) {
  if (!j.is_object()) throw Error("tune: TPE options must be a JSON object, not " + j.dump());
  TPEOptions options;
  try {
    options.n_startup_trials = j.value("n_startup_trials", options.n_startup_trials);
    options.n_ei_candidates = j.value("n_ei_candidates", options.n_ei_candidates);
    options.gamma = j.value("gamma", options.gamma);
    options.gamma_cap = j.value("gamma_cap", options.gamma_cap);
    options.multivariate = j.value("multivariate", options.multivariate);
    options.constant_liar = j.value("constant_liar", options.constant_liar);
    options.prior_weight = j.value("prior_weight", options.prior_weight);
    if (j.contains("seed") && !j["seed"].is_null()) options.seed = j["seed"].get<uint64_t>();
  } catch (const Json::exception& e) {
    throw Error("tune: bad TPE options " + j.dump() + ": " + e.what());
  }
  return options;
}

}  // namespace gantry::tune::detail
