#include "kiln/models/loader.h"
#include "kiln/models/language_model.h"

#include <algorithm>
#include <filesystem>
#include <memory>

#include "kiln/core/error.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/safetensors_source.h"
#include "kiln/models/family.h"
#include "kiln/models/gguf_model.h"

namespace kiln {
namespace fs = std::filesystem;

namespace {
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

// The file that holds `name`, for error messages (the source's folder when unknown).
std::string file_of(const TensorSource& source, const std::string& name) {
  if (const auto* safetensors = dynamic_cast<const SafetensorsSource*>(&source))
    return safetensors->set().file_of(name);
  return source.where();
}

// A Kiln checkpoint: the spec is rebuilt from the source config.json stored in the
// manifest, the weights are the checkpoint's tensors under their unscanned names (views).
LoadedModel load_kiln_checkpoint(const std::string& path, Residency residency,
                                 const FamilyChoice& choice) {
  const KilnCheckpoint checkpoint(path, residency);
  const std::string source = path + "/kiln_checkpoint.json: source_config";
  const Json& config = checkpoint.manifest().value("source_config", Json::object());
  check(config.is_object() && !config.empty(),
        source + " is empty; the model cannot be built without its config.json");
  LoadedModel loaded;
  loaded.path = path;
  loaded.config = HfConfig::from_json(config, source);
  bool registered = true;
  try {
    family_for(loaded.config);
  } catch (const Error&) {
    registered = false;
  }
  if (registered || !choice.name.empty() || !choice.file.empty() ||
      fs::exists(fs::path(path) / kFamilyFileName)) {
    loaded.family = choose_family(loaded.config, path, choice);
    loaded.spec = loaded.family->build_spec(loaded.config);
    loaded.spec.family = loaded.family->name();
  } else {  // brought up by the generic route: the manifest holds the spec it found
    loaded.spec = ModelSpec::from_json(checkpoint.manifest().value("model_spec", Json::object()),
                                       path + "/kiln_checkpoint.json: model_spec");
  }
  merge_generation_config(path, loaded.spec);
  loaded.weights = checkpoint.unscanned_tensors();
  return loaded;
}
}  // namespace

WeightMap apply_weight_mappings(const std::vector<WeightMapping>& mappings,
                                const TensorSource& source) {
  WeightMap weights;
  for (const WeightMapping& mapping : mappings) {
    std::vector<Tensor> inputs;
    for (const std::string& hf_name : mapping.hf_names) {
      check(source.contains(hf_name), source.where() + ": missing tensor '" + hf_name +
                                          "' (needed for '" + mapping.kiln_name + "')");
      inputs.push_back(source.get(hf_name));
    }
    Tensor tensor = mapping.transform ? mapping.transform(inputs) : inputs.at(0);
    check(tensor.shape() == mapping.shape,
          file_of(source, mapping.hf_names.at(0)) + ": tensor '" + mapping.hf_names.at(0) +
              "' has shape " + tensor.shape_string() + ", expected " +
              shape_to_string(mapping.shape) + " (for '" + mapping.kiln_name + "')");
    weights[mapping.kiln_name] = std::move(tensor);
  }
  return weights;
}

LoadedModel load_model(const std::string& path, Residency residency, const FamilyChoice& choice) {
  if (is_gguf_model(path)) {
    LoadedModel loaded;
    loaded.path = path;
    const GgufSource source(path, residency, gguf_weights());
    loaded.config = gguf_hf_config(source.gguf());
    loaded.family = choose_family(loaded.config, fs::path(path).parent_path().string(), choice);
    loaded.spec = loaded.family->build_spec(loaded.config);
    loaded.spec.family = loaded.family->name();
    loaded.family->refine_spec(loaded.spec, source);
    loaded.weights = apply_weight_mappings(loaded.family->map_weights(loaded.spec, source), source);
    return loaded;
  }
  check(fs::is_directory(path), path + ": not a model folder (nor a .gguf file)");
  if (KilnCheckpoint::present_in(path)) return load_kiln_checkpoint(path, residency, choice);
  LoadedModel loaded;
  loaded.path = path;
  loaded.config = HfConfig::load(path);
  loaded.family = choose_family(loaded.config, path, choice);
  const Family& family = *loaded.family;
  loaded.spec = family.build_spec(loaded.config);
  loaded.spec.family = family.name();
  merge_generation_config(path, loaded.spec);
  const std::unique_ptr<TensorSource> source = open_model_source(path, loaded.config, residency);
  family.refine_spec(loaded.spec, *source);
  loaded.weights = apply_weight_mappings(family.map_weights(loaded.spec, *source), *source);
  return loaded;
}

}  // namespace kiln
