#include "gantry/train/checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include <torch/torch.h>

#include "checkpoint_access.h"
#include "gantry/train/data.h"

namespace gantry::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kModelFile = "model.pt";
constexpr const char* kOptimizerFile = "optimizer.pt";

Json read_metadata(const fs::path& dir) {
  fs::path file = dir / Checkpoint::kMetadataFile;
  std::ifstream in(file);
  if (!in) return Json::object();
  try {
    Json j = Json::parse(in);
    return j.is_object() ? j : Json::object();
  } catch (const Json::exception& e) {
    throw Error("checkpoint metadata " + file.string() + " is not valid JSON: " + e.what());
  }
}

void write_metadata(const fs::path& dir, const Json& metadata) {
  fs::path file = dir / Checkpoint::kMetadataFile;
  std::ofstream out(file, std::ios::trunc);
  out << metadata.dump(2) << "\n";
  if (!out) throw Error("cannot write " + file.string());
}

// Copies every parameter and buffer of `module` from `archive`, after checking that each
// is there with the module's shape. Not Module::load: it replaces a tensor of another shape
// silently, and it swaps the parameters' storage (set_), which gives them new gradient
// accumulators and so drops the hooks a data-parallel wrapper put on the old ones.
void load_into(torch::nn::Module& module, torch::serialize::InputArchive& archive, const std::string& prefix,
               const std::string& file) {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;  // (mine, saved)
  auto check = [&](const std::string& name, const torch::Tensor& mine, bool is_buffer) {
    torch::Tensor saved;
    if (!archive.try_read(name, saved, is_buffer)) {
      throw Error("checkpoint " + file + " has no " + prefix + name + ": it does not match the model");
    }
    if (saved.sizes() != mine.sizes()) {
      std::ostringstream why;
      why << "checkpoint " << file << " holds " << prefix << name << " of shape " << saved.sizes()
          << ", the model's is " << mine.sizes();
      throw Error(why.str());
    }
    copies.emplace_back(mine, saved);
  };
  for (const auto& p : module.named_parameters(/*recurse=*/false)) check(p.key(), p.value(), false);
  for (const auto& b : module.named_buffers(/*recurse=*/false)) check(b.key(), b.value(), true);
  for (const auto& child : module.named_children()) {
    torch::serialize::InputArchive nested;
    if (!archive.try_read(child.key(), nested)) {
      throw Error("checkpoint " + file + " has no module " + prefix + child.key() + ": it does not match the model");
    }
    load_into(*child.value(), nested, prefix + child.key() + ".", file);
  }
  torch::NoGradGuard no_grad;
  for (auto& [mine, saved] : copies) mine.copy_(saved);
}

torch::Device device_of(const torch::nn::Module& model) {
  for (const auto& p : model.parameters()) return p.device();
  for (const auto& b : model.buffers()) return b.device();
  return torch::kCPU;
}

}  // namespace

std::string make_temp_directory(const std::string& prefix) {
  std::error_code ec;
  fs::path base = fs::temp_directory_path(ec);
  if (ec) base = "/tmp";
  std::string pattern = (base / (prefix + "-XXXXXX")).string();
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) throw Error("cannot create a temporary directory like " + pattern);
  return std::string(buf.data());
}

Checkpoint::State::~State() {
  if (owns_directory) {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
}

Checkpoint Checkpoint::from_directory(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error("checkpoint directory " + dir + " does not exist");
  return CheckpointAccess::make(fs::absolute(dir).string(), read_metadata(dir), false, nullptr);
}

Checkpoint Checkpoint::from_model(const torch::nn::Module& model, const torch::optim::Optimizer* optimizer,
                                  int epoch) {
  std::string dir = make_temp_directory("gantry-checkpoint");
  Checkpoint ck = CheckpointAccess::make(dir, Json{{"epoch", epoch}}, true, nullptr);
  try {
    torch::serialize::OutputArchive model_archive;
    model.save(model_archive);
    model_archive.save_to((fs::path(dir) / kModelFile).string());
    if (optimizer != nullptr) {
      torch::serialize::OutputArchive optimizer_archive;
      optimizer->save(optimizer_archive);
      optimizer_archive.save_to((fs::path(dir) / kOptimizerFile).string());
    }
  } catch (const c10::Error& e) {
    throw Error("cannot save the model to a checkpoint in " + dir + ": " + e.what_without_backtrace());
  }
  write_metadata(dir, ck.metadata());
  return ck;
}

int Checkpoint::load(torch::nn::Module& model, torch::optim::Optimizer* optimizer) const {
  fs::path dir(path());
  fs::path model_file = dir / kModelFile;
  std::error_code ec;
  if (!fs::exists(model_file, ec)) {
    throw Error("checkpoint " + path() + " has no " + kModelFile + " (was it made by Checkpoint::from_model?)");
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(model_file.string(), device_of(model));
    load_into(model, archive, "", model_file.string());
  } catch (const c10::Error& e) {
    throw Error("checkpoint " + model_file.string() + " does not match the model: " + e.what_without_backtrace());
  }
  if (optimizer != nullptr) {
    fs::path optimizer_file = dir / kOptimizerFile;
    if (!fs::exists(optimizer_file, ec)) throw Error("checkpoint " + path() + " has no " + kOptimizerFile);
    try {
      torch::serialize::InputArchive archive;
      archive.load_from(optimizer_file.string());
      optimizer->load(archive);
    } catch (const c10::Error& e) {
      throw Error("checkpoint " + optimizer_file.string() + " does not match the optimizer: " +
                  e.what_without_backtrace());
    }
  }
  int e = epoch().value_or(-1);
  if (state_->resume != nullptr && e >= 0) state_->resume->loaded_epoch = e;
  return e;
}

void Checkpoint::set_metadata(const std::string& key, Json value) {
  state_->metadata[key] = std::move(value);
  write_metadata(path(), state_->metadata);
}

std::optional<int> Checkpoint::epoch() const {
  auto it = state_->metadata.find("epoch");
  if (it == state_->metadata.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int>();
}

}  // namespace gantry::train
