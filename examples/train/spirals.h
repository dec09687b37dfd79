#pragma once

// Two interleaved spirals in the plane, a classic small classification problem that a
// linear model cannot solve. Generated from a seed: no downloads.

#include <cmath>
#include <cstdint>

#include <torch/torch.h>

/// `n` points, half on each of two spirals, with a little noise; labels 0 and 1.
class Spirals : public torch::data::datasets::Dataset<Spirals> {
 public:
  explicit Spirals(int64_t n, uint64_t seed = 7, double turns = 1.0, double noise = 0.02) {
    torch::Generator gen = torch::make_generator<torch::CPUGeneratorImpl>(seed);
    torch::Tensor t = torch::rand({n}, gen, torch::kDouble) * turns * 2 * M_PI + 0.5;
    labels_ = torch::arange(n, torch::kLong) % 2;
    torch::Tensor sign = labels_.to(torch::kDouble) * 2 - 1;
    torch::Tensor x = sign * t * torch::cos(t) / (turns * 2 * M_PI);
    torch::Tensor y = sign * t * torch::sin(t) / (turns * 2 * M_PI);
    points_ = torch::stack({x, y}, 1).to(torch::kFloat) + torch::randn({n, 2}, gen) * noise;
  }

  torch::data::Example<> get(size_t i) override {
    auto k = static_cast<int64_t>(i);
    return {points_[k], labels_[k]};
  }
  torch::optional<size_t> size() const override { return static_cast<size_t>(points_.size(0)); }

  const torch::Tensor& points() const { return points_; }
  const torch::Tensor& labels() const { return labels_; }

 private:
  torch::Tensor points_;
  torch::Tensor labels_;
};

/// A small multilayer perceptron: 2 inputs, two hidden layers, 2 classes.
struct SpiralNet : torch::nn::Module {
  explicit SpiralNet(int64_t width = 64) {
    fc1 = register_module("fc1", torch::nn::Linear(2, width));
    fc2 = register_module("fc2", torch::nn::Linear(width, width));
    out = register_module("out", torch::nn::Linear(width, 2));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::tanh(fc1->forward(x));
    x = torch::tanh(fc2->forward(x));
    return out->forward(x);
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, out{nullptr};
};

/// The fraction of `data`'s points that `model` classifies right.
inline double accuracy(SpiralNet& model, const Spirals& data) {
  torch::NoGradGuard no_grad;
  torch::Tensor predicted = model.forward(data.points()).argmax(1);
  return predicted.eq(data.labels()).to(torch::kDouble).mean().item<double>();
}
