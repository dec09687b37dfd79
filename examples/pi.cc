// Estimates pi by Monte Carlo: each task throws darts at the unit square with its own
// seed and returns how many land inside the quarter circle.
//
//     pi [TASKS [SAMPLES_PER_TASK]]      defaults: 8 tasks, 10000000 samples each

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <numbers>
#include <random>
#include <string_view>
#include <vector>

#include "gantry/gantry.h"

/// Darts, out of `samples` uniform in [0,1)^2, that land inside the unit quarter circle.
/// The same seed always gives the same count.
int64_t count_hits(uint64_t seed, int64_t samples) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  int64_t hits = 0;
  for (int64_t i = 0; i < samples; ++i) {
    double x = unit(rng);
    double y = unit(rng);
    if (x * x + y * y < 1.0) ++hits;
  }
  return hits;
}

GANTRY_REMOTE(count_hits);

namespace {

constexpr uint64_t kBaseSeed = 20240601;

template <typename Int>
bool parse_count(std::string_view text, Int max, Int& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size() && out >= 1 && out <= max;
}

int run(int argc, char** argv) {
  int tasks = 8;
  int64_t samples = 10'000'000;
  bool help = argc > 1 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0);
  if (help || argc > 3 || (argc > 1 && !parse_count(argv[1], 100'000, tasks)) ||
      (argc > 2 && !parse_count<int64_t>(argv[2], int64_t{1} << 40, samples))) {
    std::cerr << "usage: pi [TASKS [SAMPLES_PER_TASK]]   (defaults 8 and 10000000)\n";
    return 2;
  }

  std::vector<gantry::ObjectRef<int64_t>> refs;
  for (int t = 0; t < tasks; ++t) refs.push_back(gantry::task(count_hits).remote(kBaseSeed + t, samples));
  std::vector<int64_t> hits = gantry::get(refs);

  int64_t total_hits = 0;
  for (int64_t h : hits) total_hits += h;
  double total_samples = static_cast<double>(samples) * tasks;
  double estimate = 4.0 * static_cast<double>(total_hits) / total_samples;
  double error = std::abs(estimate - std::numbers::pi);
  // Standard deviation of the estimate: 4 * sqrt(p (1 - p) / n) with p = pi / 4.
  constexpr double p = std::numbers::pi / 4;
  double sigma = 4.0 * std::sqrt(p * (1 - p) / total_samples);

  std::cout << "pi: " << tasks << " tasks x " << samples << " samples\n"
            << std::setprecision(10) << "  estimate " << estimate << "\n"
            << "  error    " << std::setprecision(3) << error << " (" << error / sigma
            << " standard deviations)\n";

  // The statistics check; and one task recomputed here checks it got its own seed.
  bool plausible = error <= 5 * sigma;
  int last = tasks - 1;
  bool reproduced = count_hits(kBaseSeed + last, samples) == hits[last];
  std::cout << "  within 5 standard deviations: " << (plausible ? "yes" : "NO") << "\n"
            << "  task " << last << " recomputed locally gives the same hits: " << (reproduced ? "yes" : "NO")
            << "\n";
  return plausible && reproduced ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  gantry::init(argc, argv);  // in a worker process this serves tasks and never returns
  int status = 1;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "pi: " << e.what() << "\n";
  }
  gantry::shutdown();
  return status;
}
