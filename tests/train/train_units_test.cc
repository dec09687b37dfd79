// Train's pure parts, without a cluster: bucketing, the distributed sampler and loader,
// checkpoint bookkeeping, config errors (rank layout: tests/train/launch/rank_layout_test.cc).

#include <algorithm>
#include <numeric>
#include <set>

#include <gtest/gtest.h>

#include "checkpoint_manager.h"
#include "gantry/train.h"

namespace train = gantry::train;
using train::detail::BucketParam;

TEST(Buckets, ReverseOrderWithCapsAndKinds) {
  // Sizes in bytes; the last parameters' gradients come first in backward.
  std::vector<BucketParam> params = {{400, 0}, {100, 0}, {300, 0}, {50, 1}, {60, 0}, {40, 0}};
  auto buckets = train::detail::assign_buckets(params, /*cap=*/450, /*first_cap=*/100);
  // First bucket (cap 100): params 5 and 4 (40 + 60). Param 3 is another kind. Then 2
  // and 1 (300 + 100 = 400 <= 450); 0 alone.
  std::vector<std::vector<size_t>> want = {{5, 4}, {3}, {2, 1}, {0}};
  EXPECT_EQ(buckets, want);
}

TEST(Buckets, AParameterLargerThanTheCapHasItsOwnBucket) {
  std::vector<BucketParam> params = {{10, 0}, {1000, 0}, {10, 0}};
  auto buckets = train::detail::assign_buckets(params, 100, 100);
  std::vector<std::vector<size_t>> want = {{2}, {1}, {0}};
  EXPECT_EQ(buckets, want);
  // Every parameter lands in exactly one bucket.
  std::vector<BucketParam> many(37, {7, 0});
  std::set<size_t> seen;
  for (const auto& b : train::detail::assign_buckets(many, 30, 10))
    for (size_t i : b) EXPECT_TRUE(seen.insert(i).second);
  EXPECT_EQ(seen.size(), 37u);
}

TEST(Sampler, ShardsAreDisjointAndCoverTheDataSet) {
  for (bool shuffle : {false, true}) {
    for (size_t size : {0u, 1u, 10u, 11u, 97u}) {
      for (int world : {1, 2, 3, 4}) {
        train::DataOptions o{.batch_size = 4, .shuffle = shuffle, .seed = 3, .drop_last = false};
        std::vector<size_t> all;
        size_t per_rank = 0;
        for (int r = 0; r < world; ++r) {
          auto s = train::shard_indices(size, r, world, /*epoch=*/2, o);
          if (r == 0) per_rank = s.size();
          EXPECT_EQ(s.size(), per_rank);  // equal shards: every rank steps the same number of times
          all.insert(all.end(), s.begin(), s.end());
        }
        std::set<size_t> distinct(all.begin(), all.end());
        EXPECT_EQ(distinct.size(), size) << "size " << size << " world " << world;
        EXPECT_EQ(all.size(), (size + world - 1) / world * world);  // padded
        // With drop_last the shards are disjoint and the remainder is left out.
        o.drop_last = true;
        std::set<size_t> kept;
        for (int r = 0; r < world; ++r)
          for (size_t i : train::shard_indices(size, r, world, 2, o)) EXPECT_TRUE(kept.insert(i).second);
        EXPECT_EQ(kept.size(), size / world * world);
      }
    }
  }
}

TEST(Sampler, ReshufflesPerEpochFromOneSeed) {
  train::DataOptions o{.batch_size = 1, .shuffle = true, .seed = 42};
  auto e0 = train::shard_indices(1000, 0, 2, 0, o);
  auto e0_again = train::shard_indices(1000, 0, 2, 0, o);
  auto e1 = train::shard_indices(1000, 0, 2, 1, o);
  EXPECT_EQ(e0, e0_again);  // deterministic
  EXPECT_NE(e0, e1);        // a new order each epoch
  o.seed = 43;
  EXPECT_NE(e0, train::shard_indices(1000, 0, 2, 0, o));
  o.shuffle = false;
  auto plain = train::shard_indices(10, 1, 2, 5, o);
  EXPECT_EQ(plain, (std::vector<size_t>{1, 3, 5, 7, 9}));
  EXPECT_THROW(train::shard_indices(10, 2, 2, 0, o), std::invalid_argument);
}

TEST(Sampler, WorksAsALibTorchSampler) {
  train::DistributedSampler sampler(10, 1, 2, {.batch_size = 2, .shuffle = false});
  sampler.reset();
  EXPECT_EQ(sampler.epoch(), 0);
  std::vector<size_t> seen;
  while (auto batch = sampler.next(2)) seen.insert(seen.end(), batch->begin(), batch->end());
  EXPECT_EQ(seen, (std::vector<size_t>{1, 3, 5, 7, 9}));
  sampler.reset();
  EXPECT_EQ(sampler.epoch(), 1);
  sampler.set_epoch(7);
  sampler.reset();
  EXPECT_EQ(sampler.epoch(), 7);
  EXPECT_EQ(sampler.shard_size(), 5u);
}

namespace {
class Numbers : public torch::data::datasets::Dataset<Numbers> {
 public:
  torch::data::Example<> get(size_t i) override {
    return {torch::tensor(static_cast<int64_t>(i)), torch::tensor(0)};
  }
  torch::optional<size_t> size() const override { return 20; }
};
}  // namespace

TEST(Loader, EachPassIsTheNextEpochAndALoadedCheckpointSetsTheFirst) {
  auto resume = std::make_shared<train::detail::ResumeState>();
  train::DistributedLoader loader(Numbers().map(torch::data::transforms::Stack<>()), 0, 2,
                                  {.batch_size = 4, .shuffle = true, .seed = 1}, resume);
  EXPECT_EQ(loader.size(), 3u);  // 10 samples per rank in batches of 4
  resume->loaded_epoch = 4;  // what Checkpoint::load does in a loop
  std::vector<int64_t> first_pass;
  for (auto& batch : loader)
    for (int64_t i = 0; i < batch.data.size(0); ++i) first_pass.push_back(batch.data[i].item<int64_t>());
  EXPECT_EQ(loader.epoch(), 5);
  EXPECT_EQ(first_pass.size(), 10u);
  auto want = train::shard_indices(20, 0, 2, 5, {.batch_size = 4, .shuffle = true, .seed = 1});
  EXPECT_EQ(std::vector<int64_t>(want.begin(), want.end()), first_pass);
  for (auto& batch : loader) (void)batch;
  EXPECT_EQ(loader.epoch(), 6);
  loader.set_epoch(0);
  for (auto& batch : loader) (void)batch;
  EXPECT_EQ(loader.epoch(), 0);
  EXPECT_EQ(resume->samples_read, 30);
}

TEST(CheckpointManager, KeepsTheBestAndTheLatest) {
  train::detail::CheckpointManager m({.num_to_keep = 2, .score_attribute = "loss", .score_order = train::kMin});
  std::vector<int64_t> dropped;
  std::vector<double> losses = {5, 3, 4, 1, 2};
  for (int64_t i = 0; i < 5; ++i)
    for (const auto& e : m.add({i, "ck" + std::to_string(i), {{"loss", losses[i]}}})) dropped.push_back(e.index);
  std::vector<int64_t> kept;
  for (const auto& e : m.kept()) kept.push_back(e.index);
  EXPECT_EQ(kept, (std::vector<int64_t>{3, 4}));
  std::sort(dropped.begin(), dropped.end());
  EXPECT_EQ(dropped, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(m.latest()->index, 4);
  EXPECT_EQ(m.next_index(), 5);
}

TEST(CheckpointManager, WithoutAScoreKeepsTheNewestAndZeroKeepsAll) {
  train::detail::CheckpointManager newest({.num_to_keep = 3});
  for (int64_t i = 0; i < 6; ++i) newest.add({i, "", {}});
  std::vector<int64_t> kept;
  for (const auto& e : newest.kept()) kept.push_back(e.index);
  EXPECT_EQ(kept, (std::vector<int64_t>{3, 4, 5}));
  train::detail::CheckpointManager all({});
  for (int64_t i = 0; i < 6; ++i) EXPECT_TRUE(all.add({i, "", {}}).empty());
  // A checkpoint without the score ranks below scored ones.
  train::detail::CheckpointManager scored({.num_to_keep = 2, .score_attribute = "acc", .score_order = train::kMax});
  scored.add({0, "", {{"acc", 0.5}}});
  scored.add({1, "", {}});
  scored.add({2, "", {{"acc", 0.1}}});
  kept.clear();
  for (const auto& e : scored.kept()) kept.push_back(e.index);
  EXPECT_EQ(kept, (std::vector<int64_t>{0, 2}));
}

TEST(Config, ErrorsNameTheKey) {
  train::Config c = {{"lr", 0.1}, {"name", "x"}};
  EXPECT_EQ(c.get<double>("lr"), 0.1);
  EXPECT_EQ(c.get<int>("epochs", 3), 3);
  try {
    c.get<double>("epochs");
    FAIL();
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"epochs\""), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("lr, name"), std::string::npos);
  }
  try {
    c.get<double>("name");
    FAIL();
  } catch (const gantry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"name\""), std::string::npos);
  }
  EXPECT_THROW(train::Config(train::Json::array({1, 2})), gantry::Error);
  train::Config merged = c.merged({{"lr", 0.5}, {"extra", 1}});
  EXPECT_EQ(merged.get<double>("lr"), 0.5);
  EXPECT_EQ(merged.get<int>("extra"), 1);
  EXPECT_EQ(merged.get<std::string>("name"), "x");
}

TEST(Checkpoint, SavesAndLoadsAModelAndOptimizer) {
  auto model = std::make_shared<torch::nn::LinearImpl>(3, 2);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  model->forward(torch::ones({1, 3})).sum().backward();
  opt.step();
  train::Checkpoint ck = train::Checkpoint::from_model(*model, opt, 7);
  std::string path = ck.path();
  EXPECT_TRUE(std::filesystem::exists(path + "/model.pt"));
  EXPECT_EQ(ck.epoch(), 7);
  auto other = std::make_shared<torch::nn::LinearImpl>(3, 2);
  torch::optim::SGD other_opt(other->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  EXPECT_EQ(ck.load(*other, other_opt), 7);
  EXPECT_TRUE(torch::equal(other->weight, model->weight));
  auto wrong = std::make_shared<torch::nn::LinearImpl>(4, 2);
  EXPECT_THROW(ck.load(*wrong), gantry::Error);
  EXPECT_THROW(train::Checkpoint::from_directory("/nonexistent/checkpoint"), gantry::Error);
  { train::Checkpoint copy = ck; }
  EXPECT_TRUE(std::filesystem::exists(path));  // copies share the directory
  ck = train::Checkpoint::from_directory("/tmp");
  EXPECT_FALSE(std::filesystem::exists(path));  // the temporary directory went with its last copy
}
