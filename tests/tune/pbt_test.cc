#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fake_trial_table.h"
#include "gantry/errors.h"
#include "gantry/tune/scheduler.h"

namespace gantry::tune {
namespace {

using test::FakeTrialTable;
using Action = Decision::Action;

Json at_iteration(int iteration, double score) { return {{"training_iteration", iteration}, {"score", score}}; }

PBTOptions options_with(ParamSpace mutations, uint64_t seed, double resample_probability = 0) {
  return {.time_attr = "training_iteration",
          .perturbation_interval = 2,
          .hyperparam_mutations = std::move(mutations),
          .quantile_fraction = 0.25,
          .resample_probability = resample_probability,
          .seed = seed};
}

std::shared_ptr<TrialScheduler> pbt(PBTOptions options) {
  auto scheduler = PBT(std::move(options));
  scheduler->setup("score", kMax);
  return scheduler;
}

// Four running trials with lr 0.1 .. 0.4 and "t3" the best (with a checkpoint when
// `top_has_checkpoint`); every trial but "t0" has reported iteration 2; "t0" (the worst)
// reports last, and its decision is returned.
Decision population_of_four(TrialScheduler& scheduler, FakeTrialTable& table, bool top_has_checkpoint) {
  const int iteration = 2;
  for (int i = 0; i < 4; ++i) {
    table.add(scheduler, "t" + std::to_string(i), {{"lr", 0.1 * (i + 1)}, {"width", 64}, {"act", "tanh"}});
  }
  table.start_all();
  for (int i = 3; i >= 1; --i) {
    EXPECT_EQ(table.report(scheduler, "t" + std::to_string(i), at_iteration(iteration, i)).action, Action::kContinue);
  }
  // Given only now, or "t2" (bottom of the first two to report) would clone "t3" already.
  table.at("t3").has_checkpoint = top_has_checkpoint;
  return table.report(scheduler, "t0", at_iteration(iteration, 0));
}

TEST(PbtTest, ABottomTrialExploitsATopTrialWithACheckpoint) {
  auto scheduler = pbt(options_with({{"lr", uniform(0.001, 1)}}, 1));
  FakeTrialTable table;
  for (int i = 0; i < 4; ++i) table.add(*scheduler, "t" + std::to_string(i), {{"lr", 0.1 * (i + 1)}});
  table.start_all();
  table.at("t3").has_checkpoint = true;
  table.at("t3").checkpoint_iteration = 2;
  for (int i = 3; i >= 1; --i) table.report(*scheduler, "t" + std::to_string(i), at_iteration(2, i));
  Decision decision = table.report(*scheduler, "t0", at_iteration(2, 0));
  ASSERT_EQ(decision.action, Action::kExploit) << decision.reason;
  EXPECT_EQ(decision.clone_from, "t3");
  // t3's lr (0.4) times 1.2 or 0.8.
  const double lr = decision.config["lr"].get<double>();
  EXPECT_TRUE(std::abs(lr - 0.48) < 1e-12 || std::abs(lr - 0.32) < 1e-12) << lr;
  EXPECT_NE(decision.reason.find("continues from t3's checkpoint at iteration 2"), std::string::npos)
      << decision.reason;
  EXPECT_NE(decision.reason.find("lr 0.4 -> "), std::string::npos) << decision.reason;
}

TEST(PbtTest, NeverClonesATrialWithoutACheckpoint) {
  // No top trial has a checkpoint: no exploit.
  {
    auto scheduler = pbt(options_with({{"lr", uniform(0.001, 1)}}, 1));
    FakeTrialTable table;
    EXPECT_EQ(population_of_four(*scheduler, table, false).action, Action::kContinue);
  }
  // Top half "t2" and "t3"; only "t2" has one, so every seed clones "t2".
  for (uint64_t seed = 0; seed < 20; ++seed) {
    PBTOptions options = options_with({{"lr", uniform(0.001, 1)}}, seed);
    options.quantile_fraction = 0.5;
    auto scheduler = pbt(std::move(options));
    FakeTrialTable table;
    for (int i = 0; i < 4; ++i) table.add(*scheduler, "t" + std::to_string(i), {{"lr", 0.1 * (i + 1)}});
    table.start_all();
    table.at("t2").has_checkpoint = true;
    table.at("t1").has_checkpoint = true;  // bottom half: never a source
    for (int i = 3; i >= 1; --i) table.report(*scheduler, "t" + std::to_string(i), at_iteration(2, i));
    Decision decision = table.report(*scheduler, "t0", at_iteration(2, 0));
    ASSERT_EQ(decision.action, Action::kExploit);
    EXPECT_EQ(decision.clone_from, "t2") << "seed " << seed;
  }
}

TEST(PbtTest, OnlyBottomTrialsAtAPerturbationIntervalExploit) {
  auto scheduler = pbt(options_with({{"lr", uniform(0.001, 1)}}, 1));
  FakeTrialTable table;
  for (int i = 0; i < 4; ++i) table.add(*scheduler, "t" + std::to_string(i), {{"lr", 0.1}});
  table.start_all();
  for (int i = 0; i < 4; ++i) table.at("t" + std::to_string(i)).has_checkpoint = true;
  // Iteration 1 is within the first interval (2) for everyone.
  for (int i = 3; i >= 0; --i) {
    EXPECT_EQ(table.report(*scheduler, "t" + std::to_string(i), at_iteration(1, i)).action, Action::kContinue);
  }
  for (int i = 3; i >= 1; --i) {
    EXPECT_EQ(table.report(*scheduler, "t" + std::to_string(i), at_iteration(2, i)).action, Action::kContinue);
  }
  EXPECT_EQ(table.report(*scheduler, "t0", at_iteration(2, 0)).action, Action::kExploit);
  // Checked at 2, "t1" is next considered at 4, where it is not in the bottom quarter.
  EXPECT_EQ(table.report(*scheduler, "t1", at_iteration(3, -5)).action, Action::kContinue);
}

TEST(PbtTest, WaitsForTheBurnInPeriod) {
  PBTOptions options = options_with({{"lr", uniform(0.001, 1)}}, 1);
  options.burn_in_period = 5;
  auto scheduler = pbt(std::move(options));
  FakeTrialTable table;
  for (int i = 0; i < 4; ++i) table.add(*scheduler, "t" + std::to_string(i), {{"lr", 0.1}});
  table.start_all();
  table.at("t3").has_checkpoint = true;
  for (int i = 3; i >= 0; --i) table.report(*scheduler, "t" + std::to_string(i), at_iteration(4, i));
  EXPECT_EQ(table.report(*scheduler, "t0", at_iteration(4, 0)).action, Action::kContinue);
  for (int i = 3; i >= 1; --i) table.report(*scheduler, "t" + std::to_string(i), at_iteration(5, i));
  EXPECT_EQ(table.report(*scheduler, "t0", at_iteration(5, 0)).action, Action::kExploit);
}

Decision exploit_with(PBTOptions options) {
  auto scheduler = pbt(std::move(options));
  FakeTrialTable table;
  for (int i = 0; i < 4; ++i) {
    table.add(*scheduler, "t" + std::to_string(i),
              {{"lr", 0.1 * (i + 1)}, {"width", 64}, {"act", "relu"}, {"opt", {{"momentum", 0.9}}}});
  }
  table.start_all();
  table.at("t3").has_checkpoint = true;
  for (int i = 3; i >= 1; --i) table.report(*scheduler, "t" + std::to_string(i), at_iteration(2, i));
  Decision decision = table.report(*scheduler, "t0", at_iteration(2, 0));
  EXPECT_EQ(decision.action, Action::kExploit);
  return decision;
}

TEST(PbtTest, ExploreMultipliesByAFactorWithoutResampling) {
  std::set<double> lrs;
  std::set<int64_t> widths;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Decision d = exploit_with(options_with(
        {{"lr", loguniform(1e-4, 1)}, {"width", randint(16, 257)}, {"opt", {{"momentum", uniform(0.5, 0.99)}}}}, seed,
        0.0));
    lrs.insert(std::round(d.config["lr"].get<double>() * 1e9) / 1e9);
    ASSERT_TRUE(d.config["width"].is_number_integer()) << d.config.dump() << ": integers stay integers";
    widths.insert(d.config["width"].get<int64_t>());
    const double momentum = d.config["opt"]["momentum"].get<double>();
    EXPECT_TRUE(std::abs(momentum - 1.08) < 1e-12 || std::abs(momentum - 0.72) < 1e-12) << momentum;
    // Keys without mutations are copied from the source.
    EXPECT_EQ(d.config["act"], "relu");
  }
  EXPECT_EQ(lrs, (std::set<double>{0.32, 0.48}));
  EXPECT_EQ(widths, (std::set<int64_t>{51, 77}));  // 64 * 0.8 = 51.2, 64 * 1.2 = 76.8
}

TEST(PbtTest, ExploreResamplesFromTheDomainWithProbabilityOne) {
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Decision d = exploit_with(options_with({{"lr", uniform(0.001, 0.002)}, {"width", randint(16, 20)}}, seed, 1.0));
    const double lr = d.config["lr"].get<double>();
    EXPECT_GE(lr, 0.001);
    EXPECT_LT(lr, 0.002);
    EXPECT_GE(d.config["width"].get<int64_t>(), 16);
    EXPECT_LT(d.config["width"].get<int64_t>(), 20);
    EXPECT_NE(d.reason.find("(resampled)"), std::string::npos) << d.reason;
  }
}

TEST(PbtTest, ExploreResamplesAnAbsentValue) {
  Decision d = exploit_with(options_with({{"dropout", uniform(0.1, 0.2)}}, 3, 0.0));
  const double dropout = d.config["dropout"].get<double>();
  EXPECT_GE(dropout, 0.1);
  EXPECT_LT(dropout, 0.2);
}

TEST(PbtTest, ExploreMovesAChoiceToANeighbour) {
  std::set<std::string> from_middle;
  std::set<std::string> from_edge;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    Decision d = exploit_with(options_with({{"act", choice({"elu", "relu", "tanh"})}}, seed, 0.0));
    from_middle.insert(d.config["act"].get<std::string>());
    Decision edge = exploit_with(options_with({{"act", choice({"relu", "elu", "tanh"})}}, seed, 0.0));
    from_edge.insert(edge.config["act"].get<std::string>());
  }
  EXPECT_EQ(from_middle, (std::set<std::string>{"elu", "tanh"}));
  EXPECT_EQ(from_edge, (std::set<std::string>{"relu", "elu"})) << "at the first value it stays or moves right";
}

TEST(PbtTest, CustomExploreRunsAfterTheMutations) {
  PBTOptions options = options_with({{"lr", uniform(0.001, 1)}}, 5, 0.0);
  options.custom_explore_fn = [](const Json& config) {
    Json changed = config;
    changed["lr_seen"] = config["lr"];
    return changed;
  };
  Decision d = exploit_with(std::move(options));
  EXPECT_EQ(d.config["lr_seen"], d.config["lr"]);
  EXPECT_NE(d.reason.find("custom_explore_fn"), std::string::npos);

  PBTOptions only_custom;
  only_custom.time_attr = "training_iteration";
  only_custom.perturbation_interval = 2;
  only_custom.custom_explore_fn = [](const Json& config) {
    Json changed = config;
    changed["lr"] = 0.5;
    return changed;
  };
  EXPECT_EQ(exploit_with(only_custom).config["lr"], 0.5);
  EXPECT_TRUE(PBT(only_custom)->spec().is_null()) << "a function cannot be rebuilt from a spec";
}

TEST(PbtTest, ASeedMakesTheSameDecisions) {
  auto run = [](uint64_t seed) {
    std::vector<std::string> log;
    auto scheduler =
        pbt(options_with({{"lr", loguniform(1e-4, 1)}, {"act", choice({"relu", "elu", "tanh"})}}, seed, 0.5));
    FakeTrialTable table;
    for (int i = 0; i < 8; ++i) {
      table.add(*scheduler, "t" + std::to_string(i), {{"lr", 0.01 * (i + 1)}, {"act", "elu"}});
      table.at("t" + std::to_string(i)).has_checkpoint = true;
    }
    for (int iteration = 1; iteration <= 12; ++iteration) {
      for (int i = 0; i < 8; ++i) {
        const std::string id = "t" + std::to_string(i);
        Decision d = table.report(*scheduler, id, at_iteration(iteration, (i * 37 + iteration * 11) % 17));
        if (d.action == Action::kExploit) table.at(id).config = d.config;
        log.push_back(id + " " + std::to_string(static_cast<int>(d.action)) + " " + d.clone_from + " " +
                      d.config.dump());
      }
    }
    return log;
  };
  const std::vector<std::string> first = run(11);
  EXPECT_EQ(first, run(11));
  EXPECT_GT(std::count_if(first.begin(), first.end(),
                          [](const std::string& line) { return line.find(" 3 ") != std::string::npos; }),
            0)
      << "the stream exploits at least once";
}

TEST(PbtTest, YieldsAtAPerturbationPointWhenTrialsWait) {
  auto scheduler = pbt(options_with({{"lr", uniform(0.001, 1)}}, 1));
  FakeTrialTable table;
  table.add(*scheduler, "a", {{"lr", 0.1}});
  table.add(*scheduler, "b", {{"lr", 0.1}});
  table.add(*scheduler, "c", {{"lr", 0.1}});
  EXPECT_EQ(table.report(*scheduler, "a", at_iteration(1, 1)).action, Action::kContinue);
  Decision d = table.report(*scheduler, "a", at_iteration(2, 1));
  EXPECT_EQ(d.action, Action::kPause) << "b and c wait for a slot";
  // The least trained waiting trial goes first.
  table.report(*scheduler, "c", at_iteration(1, 1));
  table.at("c").status = TrialStatus::kPaused;
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "b");
  table.at("b").status = TrialStatus::kRunning;
  EXPECT_EQ(scheduler->choose_trial_to_run(table), "c");
}

TEST(PbtTest, RejectsInvalidOptionsClearly) {
  auto message = [](PBTOptions options) {
    try {
      PBT(std::move(options));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const ParamSpace lr = {{"lr", uniform(0.001, 1)}};
  EXPECT_NE(message({.hyperparam_mutations = lr, .quantile_fraction = 0.6}).find("quantile_fraction"),
            std::string::npos);
  EXPECT_NE(message({.hyperparam_mutations = lr, .quantile_fraction = 0}).find("quantile_fraction"), std::string::npos);
  EXPECT_NE(message({.perturbation_interval = 0, .hyperparam_mutations = lr}).find("perturbation_interval"),
            std::string::npos);
  EXPECT_NE(message({}).find("hyperparam_mutations or custom_explore_fn"), std::string::npos);
  EXPECT_NE(message({.hyperparam_mutations = lr, .perturbation_factors = {}}).find("perturbation_factors"),
            std::string::npos);
  EXPECT_NE(message({.hyperparam_mutations = {{"lr", 0.1}}}).find("hyperparam_mutations[\"lr\"] is a constant"),
            std::string::npos);
  EXPECT_THROW(PBT({.hyperparam_mutations = lr})->setup("", kMax), Error);
}

TEST(PbtTest, SpecRebuildsAnEqualScheduler) {
  PBTOptions options = options_with({{"lr", loguniform(1e-4, 1)}, {"opt", {{"act", choice({"relu", "elu"})}}}}, 9, 0.3);
  auto original = pbt(options);
  const Json spec = original->spec();
  EXPECT_EQ(spec["name"], "pbt");
  EXPECT_EQ(spec["seed"], 9u);
  auto rebuilt = make_scheduler(spec);
  EXPECT_EQ(rebuilt->spec(), spec);
  rebuilt->setup("score", kMax);
  FakeTrialTable first;
  FakeTrialTable second;
  Decision a = population_of_four(*original, first, true);
  Decision b = population_of_four(*rebuilt, second, true);
  EXPECT_EQ(a.action, Action::kExploit);
  EXPECT_EQ(b.action, Action::kExploit);
  EXPECT_EQ(a.config, b.config);
  EXPECT_EQ(a.reason, b.reason);

  auto unseeded = PBT({.hyperparam_mutations = {{"lr", uniform(0.001, 1)}}});
  EXPECT_TRUE(unseeded->spec()["seed"].is_number_unsigned()) << "the seed drawn is recorded";
}

}  // namespace
}  // namespace gantry::tune
