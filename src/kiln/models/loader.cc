#include "kiln/models/loader.h"

#include <algorithm>
#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/family.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {
// A SafetensorsSet seen as a TensorSource.
class SafetensorsSource : public TensorSource {
 public:
  SafetensorsSource(SafetensorsSet set, std::string folder)
      : set_(std::move(set)), folder_(std::move(folder)) {}
  std::vector<std::string> names() const override { return set_.names(); }
  bool contains(const std::string& name) const override { return set_.contains(name); }
  Tensor get(const std::string& name) const override { return set_.get(name); }
  Shape shape_of(const std::string& name) const override { return set_.shape_of(name); }
  DType dtype_of(const std::string& name) const override { return set_.dtype_of(name); }
  std::string where() const override { return folder_; }
  std::string file_of(const std::string& name) const override {
    return set_.contains(name) ? set_.file_of(name) : folder_;
  }

 private:
  SafetensorsSet set_;
  std::string folder_;
};

// Adds generation_config.json's eos ids (HF generate stops at any of them) to the spec's.
void merge_generation_config(const fs::path& folder, ModelSpec& spec) {
  const fs::path path = folder / "generation_config.json";
  if (!fs::exists(path)) return;
  HfConfig generation = HfConfig::from_json(read_json_file(path.string()), path.string());
  for (int64_t id : generation.get_int_list("eos_token_id"))
    if (std::find(spec.eos_token_ids.begin(), spec.eos_token_ids.end(), id) ==
        spec.eos_token_ids.end())
      spec.eos_token_ids.push_back(id);
}
}  // namespace

LoadedModel load_model(const std::string& path) {
  check(fs::is_directory(path), path + ": not a model folder");
  LoadedModel loaded;
  loaded.path = path;
  loaded.config = HfConfig::load(path);
  const Family& family = family_for(loaded.config);
  loaded.spec = spec_from_config(loaded.config);
  merge_generation_config(path, loaded.spec);
  check(SafetensorsSet::present_in(path),
        path + ": no model.safetensors or model.safetensors.index.json");
  SafetensorsSource source(SafetensorsSet::open(path), path);
  for (const WeightMapping& mapping : family.map_weights(loaded.spec, source)) {
    std::vector<Tensor> inputs;
    for (const std::string& hf_name : mapping.hf_names) {
      check(source.contains(hf_name),
            path + ": missing tensor '" + hf_name + "' (needed for '" + mapping.kiln_name + "')");
      inputs.push_back(source.get(hf_name));
    }
    Tensor tensor = mapping.transform ? mapping.transform(inputs) : inputs.at(0);
    check(tensor.shape() == mapping.shape,
          source.file_of(mapping.hf_names.at(0)) + ": tensor '" + mapping.hf_names.at(0) +
              "' has shape " + tensor.shape_string() + ", expected " +
              shape_to_string(mapping.shape) + " (for '" + mapping.kiln_name + "')");
    loaded.weights[mapping.kiln_name] = std::move(tensor);
  }
  return loaded;
}

}  // namespace kiln
