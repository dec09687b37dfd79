#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "gantry/errors.h"
#include "gantry/tune/searcher.h"

namespace gantry::tune {
namespace {

// Every config `searcher` suggests until it is finished (it never waits).
std::vector<Json> drain(Searcher& searcher, int limit = 10000) {
  std::vector<Json> configs;
  for (int i = 0; i < limit; ++i) {
    const Suggestion s = searcher.suggest("t" + std::to_string(i));
    if (s.status == Suggestion::Status::kFinished) return configs;
    EXPECT_EQ(s.status, Suggestion::Status::kConfig);
    configs.push_back(s.config);
  }
  ADD_FAILURE() << "searcher never finished";
  return configs;
}

const ParamSpace& grid_space() {
  static const ParamSpace space = {{"a", grid_search({1, 2, 3})},
                                   {"b", grid_search({"x", "y"})},
                                   {"lr", loguniform(1e-4, 1e-1)},
                                   {"n", randint(0, 1000000)}};
  return space;
}

TEST(BasicVariantTest, RunsTheGridNumSamplesTimes) {
  auto searcher = BasicVariant({.seed = 1});
  searcher->setup({.metric = "loss", .space = &grid_space(), .num_samples = 4});
  const std::vector<Json> configs = drain(*searcher);
  ASSERT_EQ(configs.size(), 24u);
  std::map<std::pair<int, std::string>, int> per_point;
  for (size_t i = 0; i < configs.size(); ++i) {
    // Each repeat walks the whole grid, the first grid varying slowest.
    const size_t point = i % 6;
    EXPECT_EQ(configs[i]["a"], static_cast<int>(point / 2) + 1) << i;
    EXPECT_EQ(configs[i]["b"], point % 2 == 0 ? "x" : "y") << i;
    per_point[{configs[i]["a"].get<int>(), configs[i]["b"].get<std::string>()}]++;
  }
  EXPECT_EQ(per_point.size(), 6u);
  for (const auto& [point, count] : per_point) EXPECT_EQ(count, 4);
  // Without constant_grid_search, each trial draws its own values.
  std::set<int64_t> draws;
  for (const Json& c : configs) draws.insert(c["n"].get<int64_t>());
  EXPECT_GT(draws.size(), 20u);
  EXPECT_EQ(searcher->suggest("again").status, Suggestion::Status::kFinished);
}

TEST(BasicVariantTest, WithoutAGridDrawsNumSamplesConfigs) {
  const ParamSpace space = {{"lr", uniform(0, 1)}, {"epochs", 3}};
  auto searcher = RandomSearch(7);
  searcher->setup({.space = &space, .num_samples = 5});
  const std::vector<Json> configs = drain(*searcher);
  ASSERT_EQ(configs.size(), 5u);
  for (const Json& c : configs) EXPECT_EQ(c["epochs"], 3);
  EXPECT_EQ(searcher->name(), "random");
}

TEST(BasicVariantTest, SameSeedSameConfigsOtherSeedOthers) {
  auto run = [](uint64_t seed) {
    auto searcher = BasicVariant({.seed = seed});
    searcher->setup({.space = &grid_space(), .num_samples = 3});
    return drain(*searcher);
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(BasicVariantTest, SpecRebuildsAnEqualSearcher) {
  for (bool constant : {false, true}) {
    auto searcher = BasicVariant({.constant_grid_search = constant});  // seed drawn
    const Json spec = searcher->spec();
    EXPECT_EQ(spec["name"], "basic_variant");
    EXPECT_TRUE(spec["seed"].is_number_integer());
    EXPECT_EQ(spec["constant_grid_search"], constant);
    auto rebuilt = make_searcher(spec);
    EXPECT_EQ(rebuilt->spec(), spec);
    searcher->setup({.space = &grid_space(), .num_samples = 2});
    rebuilt->setup({.space = &grid_space(), .num_samples = 2});
    EXPECT_EQ(drain(*searcher), drain(*rebuilt));
  }
  auto random = make_searcher(RandomSearch(3)->spec());
  EXPECT_EQ(random->name(), "random");
}

TEST(BasicVariantTest, ConstantGridSearchRepeatsDrawsAcrossTheGrid) {
  auto searcher = BasicVariant({.seed = 5, .constant_grid_search = true});
  searcher->setup({.space = &grid_space(), .num_samples = 3});
  const std::vector<Json> configs = drain(*searcher);
  ASSERT_EQ(configs.size(), 18u);
  for (size_t repeat = 0; repeat < 3; ++repeat) {
    const Json& first = configs[repeat * 6];
    for (size_t point = 1; point < 6; ++point) {
      const Json& c = configs[repeat * 6 + point];
      EXPECT_EQ(c["lr"], first["lr"]);
      EXPECT_EQ(c["n"], first["n"]);
    }
  }
  EXPECT_NE(configs[0]["n"], configs[6]["n"]);
  EXPECT_NE(configs[6]["n"], configs[12]["n"]);
}

TEST(BasicVariantTest, RejectsBadSetup) {
  auto searcher = BasicVariant({.seed = 1});
  EXPECT_THROW(searcher->suggest("t0"), Error);
  EXPECT_THROW(searcher->setup({}), Error);
  const ParamSpace bad = {{"lr", loguniform(0, 1)}};
  EXPECT_THROW(searcher->setup({.space = &bad}), Error);
  EXPECT_THROW(searcher->setup({.space = &grid_space(), .num_samples = -1}), Error);
}

TEST(BasicVariantTest, NoSamplesMeansFinishedAtOnce) {
  auto searcher = BasicVariant({.seed = 1});
  searcher->setup({.space = &grid_space(), .num_samples = 0});
  EXPECT_EQ(searcher->suggest("t0").status, Suggestion::Status::kFinished);
}

TEST(MakeSearcherTest, UnknownNameIsAnError) {
  try {
    make_searcher({{"name", "hyperopt"}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hyperopt"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_searcher(Json::object()), Error);
  EXPECT_THROW(make_searcher({{"name", "basic_variant"}}), Error);  // no seed
}

// A searcher that hands out configs forever and records what it was told.
class RecordingSearcher : public Searcher {
 public:
  void setup(const SearchSetup&) override {}
  Suggestion suggest(const std::string& trial_id) override {
    if (finish_after >= 0 && suggested >= finish_after) return Suggestion::finished();
    ++suggested;
    return Suggestion::of({{"id", trial_id}});
  }
  void on_trial_result(const std::string& trial_id, const Json&) override { results.push_back(trial_id); }
  void on_trial_complete(const std::string& trial_id, const Json&, const Json&, bool) override {
    completed.push_back(trial_id);
  }
  std::string name() const override { return "recording"; }

  int finish_after = -1;
  int suggested = 0;
  std::vector<std::string> results;
  std::vector<std::string> completed;
};

TEST(ConcurrencyLimiterTest, NeverExceedsMaxConcurrent) {
  auto inner = std::make_shared<RecordingSearcher>();
  auto limiter = ConcurrencyLimiter(inner, 3);
  limiter->setup({});
  std::set<std::string> running;
  Rng rng(17);
  int next = 0;
  for (int step = 0; step < 500; ++step) {
    // Ask until the limiter waits, then end one running trial at random.
    for (;;) {
      const std::string id = "t" + std::to_string(next);
      const Suggestion s = limiter->suggest(id);
      if (s.status == Suggestion::Status::kWait) break;
      ASSERT_EQ(s.status, Suggestion::Status::kConfig);
      running.insert(id);
      ++next;
      ASSERT_LE(running.size(), 3u);
    }
    ASSERT_EQ(running.size(), 3u);
    auto it = std::next(running.begin(), static_cast<long>(rng() % running.size()));
    limiter->on_trial_result(*it, {{"loss", 1}});
    limiter->on_trial_complete(*it, {}, {{"loss", 1}}, false);
    running.erase(it);
  }
  EXPECT_EQ(inner->completed.size(), 500u);
  EXPECT_EQ(inner->results.size(), 500u);
}

TEST(ConcurrencyLimiterTest, BatchWaitsForTheWholeBatch) {
  auto inner = std::make_shared<RecordingSearcher>();
  auto limiter = ConcurrencyLimiter(inner, 2, /*batch=*/true);
  limiter->setup({});
  EXPECT_EQ(limiter->suggest("a").status, Suggestion::Status::kConfig);
  EXPECT_EQ(limiter->suggest("b").status, Suggestion::Status::kConfig);
  EXPECT_EQ(limiter->suggest("c").status, Suggestion::Status::kWait);
  limiter->on_trial_complete("a", {}, {{"loss", 1}}, false);
  // "a" ended but its batch has not: no new trial, and the inner searcher hears nothing yet.
  EXPECT_EQ(limiter->suggest("c").status, Suggestion::Status::kWait);
  EXPECT_TRUE(inner->completed.empty());
  limiter->on_trial_complete("b", {}, {{"loss", 2}}, false);
  EXPECT_EQ(inner->completed, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(limiter->suggest("c").status, Suggestion::Status::kConfig);
  EXPECT_EQ(limiter->suggest("d").status, Suggestion::Status::kConfig);
  EXPECT_EQ(limiter->suggest("e").status, Suggestion::Status::kWait);
}

TEST(ConcurrencyLimiterTest, WithoutBatchAnEndedTrialFreesItsSlotAtOnce) {
  auto inner = std::make_shared<RecordingSearcher>();
  auto limiter = ConcurrencyLimiter(inner, 2);
  limiter->setup({});
  limiter->suggest("a");
  limiter->suggest("b");
  EXPECT_EQ(limiter->suggest("c").status, Suggestion::Status::kWait);
  limiter->on_trial_complete("a", {}, nullptr, true);
  EXPECT_EQ(inner->completed, (std::vector<std::string>{"a"}));
  EXPECT_EQ(limiter->suggest("c").status, Suggestion::Status::kConfig);
}

TEST(ConcurrencyLimiterTest, ShortLastBatchStillReachesTheInnerSearcher) {
  auto inner = std::make_shared<RecordingSearcher>();
  inner->finish_after = 3;
  auto limiter = ConcurrencyLimiter(inner, 2, /*batch=*/true);
  limiter->setup({});
  limiter->suggest("a");
  limiter->suggest("b");
  limiter->on_trial_complete("a", {}, nullptr, false);
  limiter->on_trial_complete("b", {}, nullptr, false);
  EXPECT_EQ(limiter->suggest("c").status, Suggestion::Status::kConfig);
  EXPECT_EQ(limiter->suggest("d").status, Suggestion::Status::kFinished);
  limiter->on_trial_complete("c", {}, nullptr, false);
  EXPECT_EQ(inner->completed, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(ConcurrencyLimiterTest, TrialsItDidNotSuggestAreForwarded) {
  auto inner = std::make_shared<RecordingSearcher>();
  auto limiter = ConcurrencyLimiter(inner, 1, /*batch=*/true);
  limiter->setup({});
  limiter->suggest("a");
  limiter->on_trial_complete("point0", {{"lr", 0.1}}, {{"loss", 1}}, false);
  EXPECT_EQ(inner->completed, (std::vector<std::string>{"point0"}));
  EXPECT_EQ(limiter->suggest("b").status, Suggestion::Status::kWait);
}

TEST(ConcurrencyLimiterTest, ValidatesAndRoundTripsItsSpec) {
  EXPECT_THROW(ConcurrencyLimiter(std::make_shared<RecordingSearcher>(), 0), Error);
  try {
    ConcurrencyLimiter(std::make_shared<RecordingSearcher>(), -1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_concurrent"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ConcurrencyLimiter(nullptr, 2), Error);
  // A searcher of your own has no spec, so neither has its limiter.
  EXPECT_TRUE(ConcurrencyLimiter(std::make_shared<RecordingSearcher>(), 2)->spec().is_null());

  auto limiter = ConcurrencyLimiter(BasicVariant({.seed = 9}), 4, true);
  const Json spec = limiter->spec();
  EXPECT_EQ(spec["name"], "limiter");
  EXPECT_EQ(spec["max_concurrent"], 4);
  EXPECT_EQ(spec["batch"], true);
  EXPECT_EQ(spec["searcher"]["seed"], 9);
  EXPECT_EQ(make_searcher(spec)->spec(), spec);
  EXPECT_THROW(make_searcher({{"name", "limiter"}, {"max_concurrent", 0}, {"searcher", spec["searcher"]}}), Error);
}

}  // namespace
}  // namespace gantry::tune
