// TPE as a pure unit: hand-made results, fixed seeds, no cluster.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "gantry/tune/searcher.h"
#include "parzen_estimator.h"

namespace gantry::tune {
namespace {

using Objective = std::function<double(const Json& config)>;

SearchSetup setup_for(const ParamSpace& space, int num_samples, Mode mode = kMin) {
  return {.metric = "loss", .mode = mode, .space = &space, .num_samples = num_samples};
}

// Runs `trials` sequential trials (suggest, evaluate, complete) and returns the configs.
std::vector<Json> run_sequential(Searcher& searcher, const Objective& objective, int trials) {
  std::vector<Json> configs;
  for (int i = 0; i < trials; ++i) {
    std::string id = "t" + std::to_string(i);
    Suggestion s = searcher.suggest(id);
    EXPECT_EQ(s.status, Suggestion::Status::kConfig);
    searcher.on_trial_complete(id, s.config, {{"loss", objective(s.config)}}, false);
    configs.push_back(s.config);
  }
  return configs;
}

template <typename Predicate>
int count_last(const std::vector<Json>& configs, int last, Predicate near) {
  int count = 0;
  for (std::size_t i = configs.size() - last; i < configs.size(); ++i) count += near(configs[i]) ? 1 : 0;
  return count;
}

TEST(TPETest, ConcentratesNearTheOptimumOfAUniformParameter) {
  ParamSpace space = {{"x", uniform(0, 1)}};
  auto tpe = TPE({.seed = 1});
  tpe->setup(setup_for(space, 60));
  auto configs = run_sequential(
      *tpe, [](const Json& c) { return std::pow(c["x"].get<double>() - 0.3, 2); }, 60);
  // Random search puts 4 of 20 within 0.1 of 0.3 on average.
  int near = count_last(configs, 20, [](const Json& c) { return std::abs(c["x"].get<double>() - 0.3) < 0.1; });
  EXPECT_GE(near, 10);
}

TEST(TPETest, ConcentratesOnALogScale) {
  ParamSpace space = {{"lr", loguniform(1e-6, 1)}};
  auto tpe = TPE({.seed = 2});
  tpe->setup(setup_for(space, 60));
  auto decade_off = [](const Json& c) { return std::log10(c["lr"].get<double>()) + 3; };
  auto configs = run_sequential(
      *tpe, [&](const Json& c) { return std::pow(decade_off(c), 2); }, 60);
  // Within half a decade of 1e-3: one draw in six at random.
  int near = count_last(configs, 20, [&](const Json& c) { return std::abs(decade_off(c)) < 0.5; });
  EXPECT_GE(near, 7);
}

TEST(TPETest, ChoosesTheBestCategoryFarMoreOften) {
  ParamSpace space = {{"optimizer", choice({"sgd", "adam", "rmsprop", "adagrad"})}};
  auto tpe = TPE({.seed = 3});
  tpe->setup(setup_for(space, 60));
  std::map<std::string, double> loss = {{"sgd", 1.0}, {"adam", 0.1}, {"rmsprop", 0.5}, {"adagrad", 2.0}};
  auto configs = run_sequential(
      *tpe, [&](const Json& c) { return loss.at(c["optimizer"].get<std::string>()); }, 60);
  int adam = count_last(configs, 20, [](const Json& c) { return c["optimizer"] == "adam"; });
  EXPECT_GE(adam, 14);  // 5 at random
}

TEST(TPETest, IntegerParametersStayIntegralAndFindTheOptimum) {
  ParamSpace space = {{"layers", randint(0, 20)}};
  auto tpe = TPE({.seed = 4});
  tpe->setup(setup_for(space, 50));
  auto configs = run_sequential(
      *tpe, [](const Json& c) { return std::abs(c["layers"].get<double>() - 13); }, 50);
  for (const Json& c : configs) {
    ASSERT_TRUE(c["layers"].is_number_integer()) << c.dump();
    EXPECT_GE(c["layers"].get<int>(), 0);
    EXPECT_LT(c["layers"].get<int>(), 20);
  }
  int near = count_last(configs, 20, [](const Json& c) { return std::abs(c["layers"].get<int>() - 13) <= 1; });
  EXPECT_GE(near, 7);  // 3 at random
}

TEST(TPETest, MaximisesUnderMaxMode) {
  ParamSpace space = {{"x", uniform(0, 1)}};
  auto tpe = TPE({.seed = 5});
  tpe->setup(setup_for(space, 60, kMax));
  auto configs = run_sequential(
      *tpe, [](const Json& c) { return -std::pow(c["x"].get<double>() - 0.7, 2); }, 60);
  int near = count_last(configs, 20, [](const Json& c) { return std::abs(c["x"].get<double>() - 0.7) < 0.1; });
  EXPECT_GE(near, 10);
}

TEST(TPETest, MultivariateConcentratesInTwoDimensions) {
  ParamSpace space = {{"x", uniform(0, 1)}, {"y", uniform(0, 1)}, {"kind", choice({"a", "b"})}};
  auto tpe = TPE({.multivariate = true, .seed = 6});
  tpe->setup(setup_for(space, 80));
  auto objective = [](const Json& c) {
    return std::pow(c["x"].get<double>() - 0.3, 2) + std::pow(c["y"].get<double>() - 0.7, 2) +
           (c["kind"] == "b" ? 0.0 : 0.2);
  };
  auto configs = run_sequential(*tpe, objective, 80);
  // A 0.3 x 0.3 box holds 9% of random draws, and half of those pick "b": one in 20.
  int near = count_last(configs, 20, [](const Json& c) {
    return std::abs(c["x"].get<double>() - 0.3) < 0.15 && std::abs(c["y"].get<double>() - 0.7) < 0.15 &&
           c["kind"] == "b";
  });
  EXPECT_GE(near, 5);
}

TEST(TPETest, ConstantLiarSpreadsSuggestionsThatRunTogether) {
  ParamSpace space = {{"x", uniform(0, 1)}, {"y", uniform(0, 1)}};
  auto objective = [](const Json& c) {
    return std::pow(c["x"].get<double>() - 0.3, 2) + std::pow(c["y"].get<double>() - 0.6, 2);
  };
  // Over a few seeds: 30 trials complete, then twelve are suggested at once and none
  // completes. The figure is the mean distance from each to its nearest fellow.
  auto spread = [&](bool liar) {
    double total = 0;
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      auto tpe = TPE({.constant_liar = liar, .seed = seed});
      tpe->setup(setup_for(space, 100));
      run_sequential(*tpe, objective, 30);
      std::vector<Json> pending;
      for (int i = 0; i < 12; ++i) pending.push_back(tpe->suggest("p" + std::to_string(i)).config);
      for (const Json& a : pending) {
        double nearest = 2;
        for (const Json& b : pending) {
          if (&a == &b) continue;
          nearest = std::min(nearest, std::hypot(a["x"].get<double>() - b["x"].get<double>(),
                                                 a["y"].get<double>() - b["y"].get<double>()));
        }
        total += nearest / 12;
      }
    }
    return total / 5;
  };
  double with_liar = spread(true);
  double without = spread(false);
  EXPECT_GT(with_liar, 2 * without) << "with the liar " << with_liar << ", without " << without;
}

TEST(TPETest, RunningTrialsOfAUniformParameterAreNotRepeated) {
  ParamSpace space = {{"x", uniform(0, 1)}};
  auto tpe = TPE({.n_startup_trials = 5, .seed = 8});
  tpe->setup(setup_for(space, 100));
  run_sequential(
      *tpe, [](const Json& c) { return std::pow(c["x"].get<double>() - 0.3, 2); }, 10);
  std::set<double> xs;
  for (int i = 0; i < 8; ++i) xs.insert(tpe->suggest("p" + std::to_string(i)).config["x"].get<double>());
  EXPECT_EQ(xs.size(), 8u);
}

TEST(TPETest, SameSeedSameSuggestionsAndOtherSeedOthers) {
  ParamSpace space = {{"x", uniform(0, 1)}, {"lr", loguniform(1e-4, 1e-1)}, {"opt", choice({"a", "b", "c"})}};
  auto objective = [](const Json& c) {
    return std::pow(c["x"].get<double>() - 0.3, 2) + std::abs(std::log10(c["lr"].get<double>()) + 2) +
           (c["opt"] == "b" ? 0 : 1);
  };
  auto run = [&](uint64_t seed, bool multivariate) {
    auto tpe = TPE({.multivariate = multivariate, .seed = seed});
    tpe->setup(setup_for(space, 40));
    return run_sequential(*tpe, objective, 40);
  };
  EXPECT_EQ(run(11, false), run(11, false));
  EXPECT_EQ(run(11, true), run(11, true));
  EXPECT_NE(run(11, false), run(12, false));
}

TEST(TPETest, TriesEveryGridValueNumSamplesTimesAndModelsTheRest) {
  // The grid is cycled as the default searcher does; the model picks x, through its
  // startup phase and after it.
  ParamSpace grid = {{"x", uniform(0, 1)}, {"layers", grid_search({1, 2, 3})}};
  auto tpe = TPE({.n_startup_trials = 3, .seed = 1});
  tpe->setup(setup_for(grid, 4));
  std::map<int, int> per_layers;
  for (int k = 0; k < 12; ++k) {
    std::string id = "t" + std::to_string(k);
    Suggestion s = tpe->suggest(id);
    ASSERT_EQ(s.status, Suggestion::Status::kConfig) << k;
    EXPECT_EQ(s.config["layers"], (std::vector<int>{1, 2, 3})[k % 3]) << k;
    ++per_layers[s.config["layers"].get<int>()];
    double x = s.config["x"].get<double>();
    tpe->on_trial_complete(id, s.config, {{"loss", (x - 0.3) * (x - 0.3)}}, false);
  }
  EXPECT_EQ(per_layers, (std::map<int, int>{{1, 4}, {2, 4}, {3, 4}}));
  EXPECT_EQ(tpe->suggest("t12").status, Suggestion::Status::kFinished);

  ParamSpace space = {{"x", uniform(0, 1)}};
  SearchSetup no_metric = setup_for(space, 10);
  no_metric.metric.clear();
  EXPECT_THROW(TPE({.seed = 1})->setup(no_metric), Error);
  EXPECT_THROW(TPE({.gamma = 0}), Error);
  EXPECT_THROW(TPE({.n_ei_candidates = 0}), Error);
}

TEST(TPETest, SpecRebuildsAnEqualSearcher) {
  ParamSpace space = {{"x", uniform(0, 1)}, {"n", qrandint(8, 64, 8)}};
  auto objective = [](const Json& c) {
    return std::pow(c["x"].get<double>() - 0.6, 2) + std::abs(c["n"].get<double>() - 32) / 64;
  };
  // No seed given: spec() records the one drawn.
  auto original = TPE({.n_startup_trials = 5, .gamma = 0.2, .multivariate = true, .prior_weight = 0.5});
  Json spec = original->spec();
  EXPECT_EQ(spec["name"], "tpe");
  EXPECT_TRUE(spec["seed"].is_number_unsigned());
  EXPECT_EQ(spec["n_startup_trials"], 5);
  EXPECT_EQ(spec["multivariate"], true);
  auto rebuilt = make_searcher(spec);
  EXPECT_EQ(rebuilt->name(), "tpe");
  EXPECT_EQ(rebuilt->spec(), spec);

  original->setup(setup_for(space, 30));
  rebuilt->setup(setup_for(space, 30));
  EXPECT_EQ(run_sequential(*original, objective, 30), run_sequential(*rebuilt, objective, 30));
}

TEST(TPETest, FinishesAfterNumSamples) {
  ParamSpace space = {{"x", uniform(0, 1)}};
  auto tpe = TPE({.seed = 1});
  tpe->setup(setup_for(space, 3));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(tpe->suggest("t" + std::to_string(i)).status, Suggestion::Status::kConfig);
  EXPECT_EQ(tpe->suggest("t3").status, Suggestion::Status::kFinished);
}

TEST(TPETest, LearnsFromConfigsItNeverSuggestedAndIgnoresFailures) {
  ParamSpace space = {{"x", uniform(0, 1)}};
  auto tpe = TPE({.seed = 9});
  tpe->setup(setup_for(space, 100));
  // points_to_evaluate-style trials: configs the searcher never suggested.
  for (int i = 0; i < 30; ++i) {
    double x = (i + 0.5) / 30;
    tpe->on_trial_complete("given" + std::to_string(i), {{"x", x}}, {{"loss", std::abs(x - 0.8)}}, false);
  }
  // Failures, results without the metric and non-finite metrics all claim x near 0.1 is
  // best; none of them may count.
  for (int i = 0; i < 10; ++i) {
    Json config = {{"x", 0.1 + i * 0.001}};
    tpe->on_trial_complete("failed" + std::to_string(i), config, {{"loss", -100.0}}, true);
    tpe->on_trial_complete("no_metric" + std::to_string(i), config, {{"accuracy", 1.0}}, false);
    tpe->on_trial_complete("nan" + std::to_string(i), config, {{"loss", NAN}}, false);
    tpe->on_trial_complete("no_result" + std::to_string(i), config, nullptr, false);
  }
  int near_good = 0;
  int near_failed = 0;
  for (int i = 0; i < 20; ++i) {
    std::string id = "t" + std::to_string(i);
    Json c = tpe->suggest(id).config;
    double x = c["x"].get<double>();
    near_good += std::abs(x - 0.8) < 0.1 ? 1 : 0;
    near_failed += std::abs(x - 0.1) < 0.1 ? 1 : 0;
    tpe->on_trial_complete(id, c, {{"loss", std::abs(x - 0.8)}}, false);
  }
  EXPECT_GE(near_good, 12);  // 4 at random
  EXPECT_LE(near_failed, 2);
}

TEST(TPETest, LeavesSampleFromToTheSpaceAndKeepsConstants) {
  ParamSpace space = {{"x", uniform(0, 1)},
                      {"epochs", 10},
                      {"nested", {{"width", choice({16, 32, 64})}}},
                      {"double_x", sample_from([](const Json& c) { return c["x"].get<double>() * 2; })}};
  auto tpe = TPE({.n_startup_trials = 3, .seed = 10});
  tpe->setup(setup_for(space, 20));
  auto configs = run_sequential(
      *tpe,
      [](const Json& c) { return std::abs(c["x"].get<double>() - 0.5) + c["nested"]["width"].get<double>() / 64; }, 20);
  for (const Json& c : configs) {
    EXPECT_EQ(c["epochs"], 10);
    EXPECT_DOUBLE_EQ(c["double_x"].get<double>(), 2 * c["x"].get<double>());
    EXPECT_TRUE(c["nested"]["width"] == 16 || c["nested"]["width"] == 32 || c["nested"]["width"] == 64) << c.dump();
  }
}

TEST(ParzenEstimatorTest, DensityIntegratesToOneAndMassSumsToOne) {
  ParamSpace space = {{"x", uniform(-2, 3)}, {"n", randint(0, 5)}};
  auto params = detail::parzen_params(space);
  detail::ParzenPoint a = {0.5, 1}, b = {2.9, 4}, c = {-1.0, 1};
  detail::ParzenEstimator prior_only({&params[0]}, {}, 1.0);
  detail::ParzenEstimator joint({&params[0], &params[1]}, {&a, &b, &c}, 1.0);
  // The continuous dimension by the midpoint rule, the integer one by summing its values.
  const int steps = 5000;
  const double dx = 5.0 / steps;
  double prior_total = 0;
  double joint_total = 0;
  for (int i = 0; i < steps; ++i) {
    double x = -2 + (i + 0.5) * dx;
    prior_total += std::exp(prior_only.log_density({x})) * dx;
    for (int n = 0; n < 5; ++n) joint_total += std::exp(joint.log_density({x, static_cast<double>(n)})) * dx;
  }
  EXPECT_NEAR(prior_total, 1.0, 1e-3);
  EXPECT_NEAR(joint_total, 1.0, 1e-3);
}

}  // namespace
}  // namespace gantry::tune
