// Trains a small classifier one epoch per task. Each task takes the previous epoch's
// result (the model's state dict and its loss) from the object store, trains one epoch and
// returns the new one; the driver only chains the tasks and reads the losses. The weights
// go from task to task through the store, never through the driver.
//
//     $ ./epochs_as_tasks
//     epoch 0: loss 0.7595
//     ...
//     epoch 7: loss 0.0225
//     accuracy 1.00 on 2000 points

#include <gantry/gantry.h>
#include <gantry/train/tensor.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <numbers>
#include <vector>

namespace train = gantry::train;

namespace {

constexpr int64_t kPointsPerClass = 1000;
constexpr int64_t kBatchSize = 32;
constexpr int kEpochs = 8;
constexpr uint64_t kDataSeed = 7;

struct Spirals {
  torch::Tensor points;  // [2 * kPointsPerClass, 2]
  torch::Tensor labels;  // [2 * kPointsPerClass], 0 or 1
};

// Two interleaved spirals with a little noise; the same for a given seed, so each task
// makes the data itself instead of receiving it.
Spirals make_spirals(uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor t = torch::linspace(0, 1, kPointsPerClass);
  torch::Tensor angle = t * 3 * std::numbers::pi;
  torch::Tensor radius = 0.1 + t;
  std::vector<torch::Tensor> arms;
  for (int arm = 0; arm < 2; ++arm) {
    torch::Tensor a = angle + arm * std::numbers::pi;
    arms.push_back(torch::stack({radius * torch::cos(a), radius * torch::sin(a)}, 1) +
                   0.03 * torch::randn({kPointsPerClass, 2}));
  }
  return {torch::cat(arms),
          torch::cat({torch::zeros({kPointsPerClass}, torch::kLong), torch::ones({kPointsPerClass}, torch::kLong)})};
}

// 2 -> 256 -> 256 -> 2: about 67k parameters (268 KiB), enough to travel through the
// shared-memory store rather than inline.
torch::nn::Sequential make_model() {
  return torch::nn::Sequential(torch::nn::Linear(2, 256), torch::nn::Tanh(), torch::nn::Linear(256, 256),
                               torch::nn::Tanh(), torch::nn::Linear(256, 2));
}

double accuracy(torch::nn::Sequential& model, const Spirals& data) {
  torch::NoGradGuard no_grad;
  return model->forward(data.points).argmax(1).eq(data.labels).to(torch::kDouble).mean().item<double>();
}

}  // namespace

/// What one epoch hands to the next.
struct EpochResult {
  train::StateDict state;
  double loss = std::numeric_limits<double>::quiet_NaN();
  GANTRY_FIELDS(state, loss);
};

/// Trains one epoch from `previous.state`. The optimizer starts afresh each epoch (its
/// state could travel in EpochResult too).
EpochResult train_epoch(EpochResult previous, int64_t epoch) {
  torch::set_num_threads(1);
  auto model = make_model();
  train::load_state_dict(*model, previous.state);
  Spirals data = make_spirals(kDataSeed);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(0.01));
  torch::manual_seed(1000 + static_cast<uint64_t>(epoch));
  const int64_t n = data.points.size(0);
  torch::Tensor order = torch::randperm(n);
  double total = 0;
  int64_t batches = 0;
  for (int64_t start = 0; start < n; start += kBatchSize) {
    torch::Tensor index = order.slice(0, start, std::min(start + kBatchSize, n));
    torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(data.points.index_select(0, index)),
                                                              data.labels.index_select(0, index));
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    total += loss.item<double>();
    ++batches;
  }
  return {train::state_dict(*model), total / static_cast<double>(batches)};
}

GANTRY_REMOTE(train_epoch);

int main(int argc, char** argv) {
  gantry::init(argc, argv);
  torch::set_num_threads(1);
  torch::manual_seed(0);
  auto model = make_model();

  // Every epoch is submitted at once; each waits in the cluster for its predecessor.
  std::vector<gantry::ObjectRef<EpochResult>> epochs;
  gantry::ObjectRef<EpochResult> previous = gantry::put(EpochResult{train::state_dict(*model)});
  for (int epoch = 0; epoch < kEpochs; ++epoch) {
    previous = gantry::task(train_epoch).remote(previous, int64_t{epoch});
    epochs.push_back(previous);
  }

  std::vector<double> losses;
  for (int epoch = 0; epoch < kEpochs; ++epoch) {
    losses.push_back(epochs[epoch].get().loss);
    std::printf("epoch %d: loss %.4f\n", epoch, losses.back());
  }
  train::load_state_dict(*model, epochs.back().get().state);
  Spirals data = make_spirals(kDataSeed);
  std::printf("accuracy %.2f on %lld points\n", accuracy(model, data), static_cast<long long>(data.points.size(0)));
  gantry::shutdown();

  if (!(losses.back() < losses.front())) {
    std::fprintf(stderr, "the loss did not fall (%.4f -> %.4f)\n", losses.front(), losses.back());
    return 1;
  }
  return 0;
}
