#include "kiln/train/hf_export.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/family.h"
#include "kiln/models/language_model.h"

namespace kiln::train {
namespace fs = std::filesystem;

namespace {
void check_hf_source(const LoadedModel& loaded) {
  check(loaded.family != nullptr,
        loaded.path + ": a HuggingFace folder is needed (a Kiln checkpoint has no HF names)");
}
}  // namespace

std::string torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "float32";
    case DType::BF16:
      return "bfloat16";
    case DType::F16:
      return "float16";
    case DType::F64:
      return "float64";
    default:
      throw Error("no torch dtype name for " + std::string(dtype_name(dtype)));
  }
}

void check_hf_exportable(const LoadedModel& loaded) {
  check_hf_source(loaded);
  const std::unique_ptr<TensorSource> source = open_model_source(loaded.path, loaded.config);
  try {
    check_weight_mappings_invertible(loaded.family->map_weights(loaded.spec, *source), *source);
  } catch (const Error& e) {
    throw Error(std::string("training: ") + e.what() + " (family '" + loaded.family->name() + "')");
  }
}

void write_hf_folder(const LoadedModel& loaded,
                     const std::function<const Tensor*(const std::string&)>& kiln,
                     const std::string& dir, std::optional<DType> dtype) {
  check_hf_source(loaded);
  const std::unique_ptr<TensorSource> source = open_model_source(loaded.path, loaded.config);
  const std::vector<std::pair<std::string, Tensor>> tensors = invert_weight_mappings(
      loaded.family->map_weights(loaded.spec, *source), *source, kiln, dtype);
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  // The dtype written: the override, else the float tensors' own when they share one.
  std::set<DType> floats;
  for (const auto& [name, t] : tensors)
    if (is_float(t.dtype())) floats.insert(t.dtype());
  for (const auto& entry : fs::directory_iterator(loaded.path)) {
    const std::string file = entry.path().filename().string();
    const bool weights = entry.path().extension() == ".safetensors" ||
                         entry.path().extension() == ".bin" ||
                         file.find(".index.json") != std::string::npos;
    if (!entry.is_regular_file() || weights) continue;
    if (file == "config.json") {
      Json config = read_json_file(entry.path().string());
      config.erase("quantization_config");  // the tensors are written dequantized
      if (floats.size() == 1) {
        config["torch_dtype"] = torch_dtype_name(*floats.begin());
        if (config.contains("dtype")) config["dtype"] = config["torch_dtype"];
      }
      std::ofstream(dir + "/config.json") << config.dump(2) << "\n";
    } else {
      fs::copy_file(entry.path(), dir + "/" + file, fs::copy_options::overwrite_existing);
    }
  }
}

void write_hf_folder(const LoadedModel& loaded, const TrainModel& model, const std::string& dir,
                     std::optional<DType> dtype) {
  write_hf_folder(
      loaded,
      [&](const std::string& name) -> const Tensor* {
        if (auto it = model.parameters().find(name); it != model.parameters().end())
          return &it->second;
        if (auto it = model.frozen_parameters().find(name); it != model.frozen_parameters().end())
          return &it->second;
        return nullptr;
      },
      dir, dtype);
}

}  // namespace kiln::train
