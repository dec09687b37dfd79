#pragma once

// A fingerprint of a module's parameters for Train's tests: equal hashes mean
// bitwise-equal parameters (on any device).

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace gantry::train_test {

/// FNV-1a over every parameter's bytes, in registration order.
inline std::string parameter_hash(torch::nn::Module& model) {
  uint64_t h = 1469598103934665603ULL;
  for (const auto& p : model.parameters()) {
    torch::Tensor c = p.detach().contiguous().cpu();
    auto* bytes = static_cast<const uint8_t*>(c.data_ptr());
    for (int64_t i = 0; i < c.numel() * static_cast<int64_t>(c.element_size()); ++i) {
      h ^= bytes[i];
      h *= 1099511628211ULL;
    }
  }
  return std::to_string(h);
}

}  // namespace gantry::train_test
