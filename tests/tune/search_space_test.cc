#include "gantry/tune/search_space.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "gantry/errors.h"

namespace gantry::tune {
namespace {

constexpr int kDraws = 20000;

// `fn` throws gantry::Error whose message holds every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a gantry::Error mentioning " << parts.front();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" not in: " << message;
    }
  }
}

bool is_multiple(double x, double q) {
  const double k = std::round(x / q);
  return std::abs(x - k * q) <= 1e-9 * std::max(1.0, std::abs(x));
}

TEST(DomainTest, UniformStaysWithinBoundsAndCoversThem) {
  Rng rng(1);
  const Domain d = uniform(-2, 3);
  double lo = 10, hi = -10, sum = 0;
  for (int i = 0; i < kDraws; ++i) {
    const Json v = d.sample(rng);
    ASSERT_TRUE(v.is_number_float());
    const double x = v.get<double>();
    ASSERT_GE(x, -2);
    ASSERT_LT(x, 3);
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    sum += x;
  }
  EXPECT_LT(lo, -1.99);
  EXPECT_GT(hi, 2.99);
  EXPECT_NEAR(sum / kDraws, 0.5, 0.05);
}

TEST(DomainTest, QUniformGivesMultiplesOfQWithinBounds) {
  Rng rng(2);
  const Domain d = quniform(0.1, 1.0, 0.25);
  std::set<double> seen;
  for (int i = 0; i < kDraws; ++i) {
    const Json v = d.sample(rng);
    ASSERT_TRUE(v.is_number_float());
    const double x = v.get<double>();
    ASSERT_TRUE(is_multiple(x, 0.25)) << x;
    ASSERT_GE(x, 0.1);
    ASSERT_LE(x, 1.0);
    seen.insert(x);
  }
  EXPECT_EQ(seen, (std::set<double>{0.25, 0.5, 0.75, 1.0}));
}

TEST(DomainTest, QUniformWritesDecimalMultiplesExactly) {
  Rng rng(3);
  const Domain d = quniform(0, 1, 0.05);
  for (int i = 0; i < 2000; ++i) {
    const double x = d.sample(rng).get<double>();
    // The nearest double to a two-decimal number prints with at most two decimals.
    const std::string text = Json(x).dump();
    const auto dot = text.find('.');
    if (dot != std::string::npos) {
      EXPECT_LE(text.size() - dot - 1, 2u) << text;
    }
  }
  EXPECT_EQ(d.snap(0.351).dump(), "0.35");
}

TEST(DomainTest, LogUniformIsUniformInLogSpace) {
  Rng rng(4);
  const Domain d = loguniform(1e-4, 1e-1);
  std::vector<int> per_decade(3, 0);
  for (int i = 0; i < kDraws; ++i) {
    const double x = d.sample(rng).get<double>();
    ASSERT_GE(x, 1e-4);
    ASSERT_LE(x, 1e-1);
    per_decade[std::min(2, static_cast<int>(std::floor(std::log10(x) + 4)))]++;
  }
  for (int count : per_decade) EXPECT_NEAR(count, kDraws / 3.0, kDraws * 0.03);
}

TEST(DomainTest, QLogUniformGivesMultiplesWithinBounds) {
  Rng rng(5);
  const Domain d = qloguniform(1, 1000, 5);
  int small = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double x = d.sample(rng).get<double>();
    ASSERT_TRUE(is_multiple(x, 5)) << x;
    ASSERT_GE(x, 5);
    ASSERT_LE(x, 1000);
    if (x <= 30) ++small;
  }
  // Log scale: values up to 30 (about half the decades) are far more common than the 3%
  // a linear scale would give.
  EXPECT_GT(small, kDraws * 0.4);
}

TEST(DomainTest, RandIntExcludesHigh) {
  Rng rng(6);
  const Domain d = randint(-3, 4);
  std::set<int64_t> seen;
  for (int i = 0; i < kDraws; ++i) {
    const Json v = d.sample(rng);
    ASSERT_TRUE(v.is_number_integer());
    seen.insert(v.get<int64_t>());
  }
  EXPECT_EQ(seen, (std::set<int64_t>{-3, -2, -1, 0, 1, 2, 3}));
}

TEST(DomainTest, QRandIntIncludesHighAndGivesMultiples) {
  Rng rng(7);
  const Domain d = qrandint(0, 20, 5);
  std::map<int64_t, int> counts;
  for (int i = 0; i < kDraws; ++i) {
    const Json v = d.sample(rng);
    ASSERT_TRUE(v.is_number_integer());
    counts[v.get<int64_t>()]++;
  }
  ASSERT_EQ(counts.size(), 5u);
  for (const auto& [value, count] : counts) {
    EXPECT_EQ(value % 5, 0);
    EXPECT_NEAR(count, kDraws / 5.0, kDraws * 0.03) << value;
  }
  EXPECT_EQ(counts.rbegin()->first, 20);
}

TEST(DomainTest, RandnHasTheGivenMeanAndSd) {
  Rng rng(8);
  const Domain d = randn(3, 2);
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double x = d.sample(rng).get<double>();
    sum += x;
    sum_sq += x * x;
  }
  const double mean = sum / kDraws;
  EXPECT_NEAR(mean, 3, 0.05);
  EXPECT_NEAR(std::sqrt(sum_sq / kDraws - mean * mean), 2, 0.05);
}

TEST(DomainTest, QRandnGivesMultiples) {
  Rng rng(9);
  const Domain d = qrandn(0, 1, 0.5);
  for (int i = 0; i < 2000; ++i) {
    const Json v = d.sample(rng);
    ASSERT_TRUE(v.is_number_float());
    ASSERT_TRUE(is_multiple(v.get<double>(), 0.5));
  }
}

TEST(DomainTest, ChoiceDrawsEveryValueOfAnyType) {
  Rng rng(10);
  const Domain d = choice({"adam", 3, Json::array({1, 2}), nullptr});
  std::map<std::string, int> counts;
  for (int i = 0; i < 4000; ++i) counts[d.sample(rng).dump()]++;
  ASSERT_EQ(counts.size(), 4u);
  for (const auto& [value, count] : counts) EXPECT_NEAR(count, 1000, 120) << value;
}

TEST(DomainTest, GridAndSampleFromAreNotSampled) {
  Rng rng(11);
  EXPECT_THROW(grid_search({1, 2}).sample(rng), Error);
  EXPECT_THROW(sample_from([](const Json&) { return 1; }).sample(rng), Error);
}

TEST(DomainTest, InternalScaleAndSnap) {
  const Domain log = loguniform(1e-3, 1);
  EXPECT_NEAR(log.internal_low(), std::log(1e-3), 1e-12);
  EXPECT_NEAR(log.internal_high(), 0, 1e-12);
  EXPECT_NEAR(log.from_internal(log.to_internal(0.02)), 0.02, 1e-15);
  EXPECT_DOUBLE_EQ(log.snap(5.0).get<double>(), 1.0);  // clamped to high

  const Domain ints = randint(0, 10);
  EXPECT_EQ(ints.internal_low(), 0);
  EXPECT_EQ(ints.internal_high(), 9);
  EXPECT_EQ(ints.snap(9.7), Json(9));
  EXPECT_EQ(ints.snap(-4), Json(0));
  EXPECT_EQ(ints.snap(3.4), Json(3));
  EXPECT_TRUE(ints.snap(3.4).is_number_integer());

  const Domain q = qrandint(10, 100, 10);
  EXPECT_EQ(q.snap(44), Json(40));
  EXPECT_EQ(q.snap(1000), Json(100));
  EXPECT_EQ(q.internal_low(), 10);
  EXPECT_EQ(q.internal_high(), 100);

  const Domain qu = quniform(0.1, 1.0, 0.25);
  EXPECT_DOUBLE_EQ(qu.internal_low(), 0.25);
  EXPECT_DOUBLE_EQ(qu.internal_high(), 1.0);
  EXPECT_DOUBLE_EQ(qu.snap(0.0).get<double>(), 0.25);

  const Domain n = randn(1, 2);
  EXPECT_DOUBLE_EQ(n.internal_low(), -5);
  EXPECT_DOUBLE_EQ(n.internal_high(), 7);

  EXPECT_TRUE(uniform(0, 1).is_numeric());
  EXPECT_FALSE(choice({1}).is_numeric());
  EXPECT_FALSE(sample_from([](const Json&) { return 1; }).is_numeric());
  EXPECT_THROW(choice({1, 2}).snap(0), Error);
}

TEST(DomainTest, InvalidDomainsNameThePathAndBounds) {
  expect_error([] { uniform(2, 1).validate("opt/lr"); }, {"opt/lr", "low=2", "high=1", "low < high"});
  expect_error([] { uniform(1, 1).validate("x"); }, {"\"x\"", "low < high"});
  expect_error([] { loguniform(0, 1).validate("lr"); }, {"lr", "low=0", "low > 0"});
  expect_error([] { qloguniform(-1, 1, 0.1).validate("lr"); }, {"lr", "low=-1", "low > 0"});
  expect_error([] { quniform(0, 1, 0).validate("m"); }, {"m", "q=0", "q must be positive"});
  expect_error([] { quniform(0.1, 0.2, 0.5).validate("m"); }, {"m", "q=0.5", "no multiple of q"});
  expect_error([] { qrandint(0, 10, -2).validate("n"); }, {"n", "q=-2", "positive"});
  expect_error([] { randint(5, 5).validate("n"); }, {"n", "low=5", "high=5"});
  expect_error([] { randn(0, 0).validate("noise"); }, {"noise", "sd=0", "sd must be positive"});
  expect_error([] { qrandn(0, -1, 0.1).validate("noise"); }, {"noise", "sd=-1"});
  expect_error([] { choice({}).validate("opt"); }, {"opt", "choice", "at least one value"});
  expect_error([] { grid_search({}).validate("g"); }, {"g", "grid_search", "at least one value"});
  expect_error([] { sample_from(nullptr).validate("s"); }, {"s", "no function"});
  EXPECT_NO_THROW(qrandint(0, 10, 5).validate("ok"));
  EXPECT_NO_THROW(qloguniform(1e-4, 1, 1e-4).validate("ok"));
}

TEST(ParamSpaceTest, InvalidSpacesNameTheEntry) {
  expect_error([] { ParamSpace({{"a/b", 1}}).validate(); }, {"a/b", "'/'"});
  expect_error([] { ParamSpace({{"lr", 1}, {"lr", 2}}).validate(); }, {"lr", "twice"});
  expect_error([] { ParamSpace({{"", 1}}).validate(); }, {"empty key"});
  expect_error(
      [] {
        ParamSpace({{"opt", {{"momentum", uniform(1, 0.5)}}}}).validate();
      },
      {"opt/momentum", "low=1", "high=0.5"});
  expect_error([] { ParamSpace({{"opt", {{"x", 1}, {"x", 2}}}}).validate(); }, {"opt/x", "twice"});
}

TEST(ParamSpaceTest, DomainsAndFindFollowDeclarationOrder) {
  const ParamSpace space = {{"lr", loguniform(1e-4, 1e-1)},
                            {"epochs", 10},
                            {"opt", {{"momentum", uniform(0.8, 0.99)}, {"name", choice({"sgd", "adam"})}}},
                            {"seed", randint(0, 5)}};
  EXPECT_NO_THROW(space.validate());
  std::vector<std::string> paths;
  for (const auto& [path, d] : space.domains()) paths.push_back(path);
  EXPECT_EQ(paths, (std::vector<std::string>{"lr", "opt/momentum", "opt/name", "seed"}));
  ASSERT_NE(space.find("opt/momentum"), nullptr);
  EXPECT_EQ(space.find("opt/momentum")->kind, Domain::Kind::kUniform);
  EXPECT_EQ(space.find("epochs"), nullptr);
  EXPECT_EQ(space.find("opt"), nullptr);
  EXPECT_EQ(space.find("opt/missing"), nullptr);
  EXPECT_EQ(space.find("lr/x"), nullptr);
  EXPECT_FALSE(space.has_grid());
  EXPECT_FALSE(space.has_sample_from());
}

TEST(ParamSpaceTest, SetAddsOrReplaces) {
  ParamSpace space = {{"a", 1}, {"b", uniform(0, 1)}};
  space.set("a", choice({1, 2}));
  space.set("c", 3);
  ASSERT_EQ(space.entries().size(), 3u);
  EXPECT_EQ(space.entries()[0].first, "a");
  EXPECT_NE(space.find("a"), nullptr);
  EXPECT_EQ(space.entries()[2].first, "c");
}

TEST(ParamSpaceTest, GridPointsVaryTheFirstGridSlowest) {
  const ParamSpace space = {
      {"a", grid_search({1, 2})}, {"lr", uniform(0, 1)}, {"n", {{"b", grid_search({"x", "y", "z"})}}}};
  EXPECT_TRUE(space.has_grid());
  const auto points = space.grid_points();
  ASSERT_EQ(points.size(), 6u);
  const std::vector<std::pair<int, std::string>> expected = {{1, "x"}, {1, "y"}, {1, "z"},
                                                             {2, "x"}, {2, "y"}, {2, "z"}};
  for (size_t i = 0; i < points.size(); ++i) {
    ASSERT_EQ(points[i].size(), 2u);
    EXPECT_EQ(points[i].at("a"), expected[i].first) << i;
    EXPECT_EQ(points[i].at("n/b"), expected[i].second) << i;
  }
  const ParamSpace no_grid = {{"lr", uniform(0, 1)}};
  const auto one = no_grid.grid_points();
  ASSERT_EQ(one.size(), 1u);
  EXPECT_TRUE(one[0].empty());
}

TEST(ParamSpaceTest, ResolveBuildsNestedConfig) {
  const ParamSpace space = {{"lr", loguniform(1e-4, 1e-1)},
                            {"epochs", 10},
                            {"name", "run"},
                            {"list", ParamSpace::Node::json(Json::array({1, 2}))},
                            {"opt", {{"momentum", uniform(0.8, 0.99)}, {"kind", grid_search({"sgd", "adam"})}}}};
  Rng rng(12);
  const Json config = space.resolve({{"opt/kind", "adam"}}, rng);
  EXPECT_EQ(config["epochs"], 10);
  EXPECT_EQ(config["name"], "run");
  EXPECT_EQ(config["list"], Json::array({1, 2}));
  EXPECT_EQ(config["opt"]["kind"], "adam");
  const double m = config["opt"]["momentum"].get<double>();
  EXPECT_GE(m, 0.8);
  EXPECT_LT(m, 0.99);
  EXPECT_GE(config["lr"].get<double>(), 1e-4);
  EXPECT_EQ(config.size(), 5u);
}

TEST(ParamSpaceTest, ResolveNeedsGridValuesAndAcceptsExtraPaths) {
  const ParamSpace space = {{"g", grid_search({1, 2})}, {"x", uniform(0, 1)}};
  Rng rng(13);
  expect_error([&] { space.resolve({}, rng); }, {"\"g\""});
  const Json config = space.resolve({{"g", 2}, {"x", 0.5}, {"extra/depth", 3}}, rng);
  EXPECT_EQ(config["g"], 2);
  EXPECT_EQ(config["x"], 0.5);
  EXPECT_EQ(config["extra"]["depth"], 3);
}

TEST(ParamSpaceTest, ResolveIsDeterministicGivenTheRngAndSkipsAssignedDraws) {
  const ParamSpace space = {{"a", uniform(0, 1)}, {"b", randint(0, 1000000)}, {"c", choice({1, 2, 3})}};
  Rng r1(99), r2(99), r3(100);
  const Json c1 = space.resolve({}, r1);
  EXPECT_EQ(c1, space.resolve({}, r2));
  EXPECT_NE(c1, space.resolve({}, r3));
}

TEST(ParamSpaceTest, SampleFromSeesTheOtherResolvedValues) {
  std::vector<Json> seen;
  const ParamSpace space = {
      {"hidden", sample_from([&](const Json& c) {
         seen.push_back(c);
         return c["width"].get<int>() * 2;
       })},
      {"width", choice({64, 128})},
      {"opt", {{"lr", uniform(0, 1)}}},
      {"twice", sample_from([](const Json& c) { return c["hidden"].get<int>() * 2; })},
  };
  EXPECT_TRUE(space.has_sample_from());
  Rng rng(14);
  const Json config = space.resolve({}, rng);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].contains("width"));
  EXPECT_TRUE(seen[0]["opt"].contains("lr"));
  EXPECT_FALSE(seen[0].contains("twice"));
  EXPECT_EQ(config["hidden"], config["width"].get<int>() * 2);
  EXPECT_EQ(config["twice"], config["hidden"].get<int>() * 2);
}

TEST(ParamSpaceTest, SampleFromErrorsNameThePath) {
  const ParamSpace space = {{"s", sample_from([](const Json& c) { return c.at("missing"); })}};
  Rng rng(15);
  expect_error([&] { space.resolve({}, rng); }, {"\"s\"", "threw"});
}

TEST(ParamSpaceTest, LookupAssignFlatten) {
  Json config = {{"a", 1}, {"opt", {{"lr", 0.1}, {"inner", {{"x", "y"}}}}}, {"empty", Json::object()}};
  ASSERT_NE(ParamSpace::lookup(config, "opt/inner/x"), nullptr);
  EXPECT_EQ(*ParamSpace::lookup(config, "opt/inner/x"), "y");
  EXPECT_EQ(ParamSpace::lookup(config, "opt/missing"), nullptr);
  EXPECT_EQ(ParamSpace::lookup(config, "a/b"), nullptr);

  ParamSpace::assign(config, "opt/new/deep", 5);
  EXPECT_EQ(config["opt"]["new"]["deep"], 5);
  ParamSpace::assign(config, "a", "replaced");
  EXPECT_EQ(config["a"], "replaced");
  expect_error([&] { ParamSpace::assign(config, "a/b", 1); }, {"a/b", "\"a\""});

  const auto flat = ParamSpace::flatten(config);
  EXPECT_EQ(flat.at("opt/lr"), 0.1);
  EXPECT_EQ(flat.at("opt/inner/x"), "y");
  EXPECT_EQ(flat.at("opt/new/deep"), 5);
  EXPECT_EQ(flat.at("empty"), Json::object());
  EXPECT_EQ(flat.size(), 5u);

  Json rebuilt = Json::object();
  for (const auto& [path, value] : flat) ParamSpace::assign(rebuilt, path, value);
  EXPECT_EQ(rebuilt, config);
  EXPECT_THROW(ParamSpace::flatten(Json(3)), Error);
}

TEST(ParamSpaceTest, JsonRoundTripKeepsOrderAndValues) {
  const ParamSpace space = {{"z", grid_search({3, "b", Json::array({1})})},
                            {"lr", qloguniform(1e-4, 1e-1, 1e-4, 2)},
                            {"epochs", 10},
                            {"opt", {{"m", quniform(0.5, 1, 0.1)}, {"k", choice({"a", "b"})}}},
                            {"n", qrandint(0, 64, 8)},
                            {"i", randint(-2, 2)},
                            {"u", uniform(0, 1)},
                            {"lu", loguniform(1, 10)},
                            {"g", randn(1, 2)},
                            {"qg", qrandn(0, 1, 0.5)}};
  const Json j = space.to_json();
  const ParamSpace back = ParamSpace::from_json(j);
  EXPECT_EQ(back.to_json(), j);
  EXPECT_NO_THROW(back.validate());
  std::vector<std::string> paths;
  for (const auto& [path, d] : back.domains()) paths.push_back(path);
  EXPECT_EQ(paths, (std::vector<std::string>{"z", "lr", "opt/m", "opt/k", "n", "i", "u", "lu", "g", "qg"}));
  EXPECT_EQ(back.find("lr")->q, 1e-4);
  EXPECT_EQ(back.find("lr")->base, 2);
  EXPECT_EQ(back.find("g")->low, 1);
  EXPECT_EQ(back.find("g")->high, 2);
  EXPECT_EQ(back.find("z")->values.size(), 3u);
  EXPECT_TRUE(j[4]["domain"]["low"].is_number_integer());

  Rng r1(16), r2(16);
  EXPECT_EQ(space.resolve({{"z", 3}}, r1), back.resolve({{"z", 3}}, r2));
}

TEST(ParamSpaceTest, SampleFromCannotBeRestoredFromJson) {
  const ParamSpace space = {{"a", 1}, {"opt", {{"s", sample_from([](const Json&) { return 1; })}}}};
  const Json j = space.to_json();
  EXPECT_EQ(j[1]["space"][0]["domain"], Json({{"kind", "sample_from"}}));
  expect_error([&] { ParamSpace::from_json(j); }, {"opt/s", "sample_from", "give the search space again"});
}

TEST(ParamSpaceTest, FromJsonRejectsMalformedInput) {
  expect_error([] { ParamSpace::from_json(Json::object()); }, {"list of entries"});
  expect_error([] { ParamSpace::from_json(Json::array({{{"key", "x"}}})); }, {"\"x\"", "constant"});
  expect_error([] { ParamSpace::from_json(Json::parse(R"([{"key":"x","domain":{"kind":"gaussian"}}])")); },
               {"\"x\"", "gaussian"});
  expect_error([] { ParamSpace::from_json(Json::parse(R"([{"key":"x","domain":{"kind":"uniform","low":0}}])")); },
               {"\"x\"", "high"});
}

}  // namespace
}  // namespace gantry::tune
