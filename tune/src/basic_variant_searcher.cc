#include <map>
#include <string>
#include <vector>

#include "gantry/errors.h"
#include "gantry/tune/searcher.h"
#include "searcher_specs.h"

namespace gantry::tune {
namespace {

// Every grid point `num_samples` times (repeat after repeat, the grid in grid_points'
// order within each), the other domains drawn from one seeded Rng. Suggestions depend
// only on the seed and the number of suggest() calls, so a replay rebuilds them.
class BasicVariantSearcher final : public Searcher {
 public:
  BasicVariantSearcher(uint64_t seed, bool constant_grid_search, std::string name)
      : seed_(seed), constant_grid_search_(constant_grid_search), name_(std::move(name)), rng_(seed) {}

  void setup(const SearchSetup& setup) override {
    if (setup.space == nullptr) throw Error(name_ + " searcher: setup needs a search space");
    // 0 is valid: the Tuner asks for no trials of its own when points_to_evaluate
    // already cover num_samples.
    if (setup.num_samples < 0) {
      throw Error(name_ + " searcher: num_samples must not be negative, got " + std::to_string(setup.num_samples));
    }
    setup.space->validate();
    space_ = setup.space;
    num_samples_ = setup.num_samples;
    grid_ = space_->grid_points();
  }

  Suggestion suggest(const std::string& trial_id) override {
    if (space_ == nullptr) throw Error(name_ + " searcher: suggest(\"" + trial_id + "\") before setup");
    const size_t total = grid_.size() * static_cast<size_t>(num_samples_);
    if (next_ >= total) return Suggestion::finished();
    const size_t point = next_ % grid_.size();
    ++next_;
    if (!constant_grid_search_) return Suggestion::of(space_->resolve(grid_[point], rng_));
    // Every grid point of a repeat starts from the same generator state, so the values
    // drawn for the other domains are the same across the grid.
    if (point == 0) repeat_seed_ = rng_();
    Rng repeat_rng(repeat_seed_);
    return Suggestion::of(space_->resolve(grid_[point], repeat_rng));
  }

  std::string name() const override { return name_; }

  Json spec() const override {
    Json j = {{"name", "basic_variant"}, {"seed", seed_}, {"constant_grid_search", constant_grid_search_}};
    if (name_ != "basic_variant") j["display_name"] = name_;
    return j;
  }

 private:
  uint64_t seed_;
  bool constant_grid_search_;
  std::string name_;
  Rng rng_;
  uint64_t repeat_seed_ = 0;
  const ParamSpace* space_ = nullptr;  // not owned (SearchSetup::space)
  int num_samples_ = 1;
  std::vector<std::map<std::string, Json>> grid_;
  size_t next_ = 0;  // suggestions made so far
};

}  // namespace

std::shared_ptr<Searcher> BasicVariant(BasicVariantOptions options) {
  return std::make_shared<BasicVariantSearcher>(detail::seed_or_random(options.seed), options.constant_grid_search,
                                                "basic_variant");
}

std::shared_ptr<Searcher> RandomSearch(std::optional<uint64_t> seed) {
  return std::make_shared<BasicVariantSearcher>(detail::seed_or_random(seed), false, "random");
}

namespace detail {

std::shared_ptr<Searcher> basic_variant_from_spec(const Json& spec) {
  if (!spec.is_object() || !spec.contains("seed") || !spec["seed"].is_number_integer()) {
    throw Error("basic_variant spec: needs an integer \"seed\", got " + spec.dump());
  }
  const bool constant = spec.value("constant_grid_search", false);
  const std::string name = spec.value("display_name", std::string("basic_variant"));
  return std::make_shared<BasicVariantSearcher>(spec["seed"].get<uint64_t>(), constant, name);
}

}  // namespace detail
}  // namespace gantry::tune
