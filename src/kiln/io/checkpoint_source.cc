#include "kiln/io/checkpoint_source.h"

#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"
#include "kiln/io/safetensors_source.h"
#include "kiln/io/torch_bin.h"
#include "kiln/models/gguf_model.h"

namespace kiln {
namespace fs = std::filesystem;

std::string detect_checkpoint_format(const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    const std::string ext = fs::path(path).extension().string();
    if (ext == ".safetensors") return "safetensors";
    if (ext == ".bin" || ext == ".pt" || ext == ".pth") return "torch_bin";
    if (ext == ".gguf") return "gguf";
    return "";
  }
  if (!fs::is_directory(path, ec)) return "";
  if (KilnCheckpoint::present_in(path)) return "kiln";
  if (SafetensorsSet::present_in(path)) return "safetensors";
  if (TorchBinSource::present_in(path)) return "torch_bin";
  if (OrbaxSource::present_in(path)) return "orbax";
  return "";
}

std::unique_ptr<TensorSource> open_tensor_source(const std::string& path, Residency residency) {
  const std::string format = detect_checkpoint_format(path);
  if (format == "kiln") return std::make_unique<KilnCheckpoint>(path, residency);
  if (format == "safetensors") return std::make_unique<SafetensorsSource>(path, residency);
  if (format == "torch_bin") return std::make_unique<TorchBinSource>(path);
  if (format == "orbax") return std::make_unique<OrbaxSource>(path);
  if (format == "gguf") return std::make_unique<GgufSource>(path, residency);
  check(fs::exists(path), path + ": no such file or directory");
  throw Error(path +
              ": no model weights found (looked for kiln_checkpoint.json, "
              "model.safetensors[.index.json], pytorch_model.bin[.index.json], an orbax "
              "_METADATA)");
}

}  // namespace kiln
