#include "checkpoint_files.h"

#include <fstream>
#include <iterator>

#include "gantry/errors.h"
#include "gantry/train/checkpoint.h"

namespace gantry::train::detail {
namespace fs = std::filesystem;

CheckpointFiles read_checkpoint_files(const fs::path& dir) {
  CheckpointFiles out;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    if (!in) throw Error("cannot read checkpoint file " + entry.path().string());
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string rel = fs::relative(entry.path(), dir).string();
    if (rel == Checkpoint::kMetadataFile) {
      out.metadata_json.assign(bytes.begin(), bytes.end());
    } else {
      out.files[rel] = std::move(bytes);
    }
  }
  return out;
}

void write_checkpoint_file(const fs::path& dir, const std::string& rel, const std::vector<uint8_t>& bytes) {
  fs::path file = dir / rel;
  fs::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw Error("cannot write checkpoint file " + file.string());
}

}  // namespace gantry::train::detail
