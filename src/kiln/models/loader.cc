#include "kiln/models/loader.h"
#include "kiln/models/language_model.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

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

namespace {
// Where each element of a mapping's Kiln tensor comes from: the transform applied to probe
// inputs whose elements hold their index over all inputs (input j's elements start at
// offsets[j]), as I32 (I64 beyond 2^31 elements).
struct Probe {
  std::vector<int64_t> offsets;  // [inputs + 1]
  std::vector<int64_t> index;    // [Kiln elements] the global input index of each
};

std::string mapping_text(const WeightMapping& m) {
  std::string hf;
  for (const std::string& name : m.hf_names) hf += (hf.empty() ? "'" : ", '") + name + "'";
  return "'" + m.kiln_name + "' (from " + hf + ")";
}

Probe probe_mapping(const WeightMapping& m, const TensorSource& source) {
  Probe probe;
  probe.offsets.push_back(0);
  for (const std::string& hf : m.hf_names) {
    check(source.contains(hf),
          source.where() + ": missing tensor '" + hf + "' (needed for '" + m.kiln_name + "')");
    probe.offsets.push_back(probe.offsets.back() + shape_numel(source.shape_of(hf)));
  }
  const int64_t total = probe.offsets.back();
  if (!m.transform) {  // a rename of the first input: element i is element i
    probe.index.resize(static_cast<size_t>(probe.offsets.at(1)));
    for (size_t i = 0; i < probe.index.size(); ++i) probe.index[i] = static_cast<int64_t>(i);
    return probe;
  }
  const DType dtype = total < (int64_t{1} << 31) ? DType::I32 : DType::I64;
  std::vector<Tensor> inputs;
  for (size_t j = 0; j < m.hf_names.size(); ++j) {
    Tensor t = Tensor::zeros(dtype, source.shape_of(m.hf_names[j]));
    const int64_t first = probe.offsets[j];
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (dtype == DType::I32)
        t.mutable_data<int32_t>()[i] = static_cast<int32_t>(first + i);
      else
        t.mutable_data<int64_t>()[i] = first + i;
    }
    inputs.push_back(std::move(t));
  }
  Tensor out;
  try {
    out = m.transform(inputs);
  } catch (const Error& e) {
    throw Error("exporting " + mapping_text(m) + ": its transform does not only select elements (" +
                e.what() + ")");
  }
  check(out.dtype() == dtype && out.shape() == m.shape,
        "exporting " + mapping_text(m) + ": its transform does not only select elements (it " +
            "made " + std::string(dtype_name(out.dtype())) + " " + out.shape_string() +
            " of an index probe, expected " + std::string(dtype_name(dtype)) + " " +
            shape_to_string(m.shape) + ")");
  const Tensor dense = out.contiguous();
  probe.index.resize(static_cast<size_t>(dense.numel()));
  for (int64_t i = 0; i < dense.numel(); ++i) {
    const int64_t g = dtype == DType::I32 ? dense.data<int32_t>()[i] : dense.data<int64_t>()[i];
    check(g >= 0 && g < total, "exporting " + mapping_text(m) +
                                   ": its transform does not only select elements (element " +
                                   std::to_string(i) + " is no element of its inputs)");
    probe.index[static_cast<size_t>(i)] = g;
  }
  return probe;
}

// One rebuilt HF tensor: its bytes, which elements are written, and by which Kiln tensors.
struct Rebuilt {
  Tensor tensor;
  std::vector<uint8_t> written;
  std::vector<std::string> writers;
};
}  // namespace

void check_weight_mappings_invertible(const std::vector<WeightMapping>& mappings,
                                      const TensorSource& source) {
  for (const WeightMapping& m : mappings)
    if (m.transform) probe_mapping(m, source);
}

std::vector<std::pair<std::string, Tensor>> invert_weight_mappings(
    const std::vector<WeightMapping>& mappings, const TensorSource& source,
    const std::function<const Tensor*(const std::string&)>& kiln, std::optional<DType> dtype) {
  const auto out_dtype = [&](const std::string& hf) {
    const DType d = source.dtype_of(hf);
    return dtype && is_float(d) ? *dtype : d;
  };
  std::map<std::string, Rebuilt> rebuilt;
  for (const WeightMapping& m : mappings) {
    const Tensor* value = kiln(m.kiln_name);
    check(value != nullptr && value->defined(),
          "exporting " + mapping_text(m) + ": no Kiln tensor '" + m.kiln_name + "' to export");
    check(value->shape() == m.shape, "exporting " + mapping_text(m) +
                                         ": the Kiln tensor has shape " + value->shape_string() +
                                         ", expected " + shape_to_string(m.shape));
    const DType d = out_dtype(m.hf_names.at(0));
    for (const std::string& hf : m.hf_names)
      check(out_dtype(hf) == d && is_float(d),
            "exporting " + mapping_text(m) + ": its tensors are not all of one float dtype");
    const Probe probe = probe_mapping(m, source);
    const Tensor converted = value->to(d);  // contiguous
    const size_t es = dtype_size(d);
    const auto* src = static_cast<const std::byte*>(converted.raw());
    std::vector<Rebuilt*> parts;
    for (const std::string& hf : m.hf_names) {
      Rebuilt& r = rebuilt[hf];
      if (!r.tensor.defined()) {
        r.tensor = Tensor::zeros(d, source.shape_of(hf));
        r.written.assign(static_cast<size_t>(r.tensor.numel()), 0);
      }
      r.writers.push_back(m.kiln_name);
      parts.push_back(&r);
    }
    for (size_t e = 0; e < probe.index.size(); ++e) {
      const int64_t g = probe.index[e];
      const auto j =
          static_cast<size_t>(std::upper_bound(probe.offsets.begin(), probe.offsets.end(), g) -
                              probe.offsets.begin() - 1);
      const auto local = static_cast<size_t>(g - probe.offsets[j]);
      Rebuilt& r = *parts[j];
      std::byte* dst = static_cast<std::byte*>(r.tensor.mutable_raw()) + local * es;
      if (r.written[local]) {
        if (std::memcmp(dst, src + e * es, es) != 0) {
          std::string others;
          for (const std::string& w : r.writers)
            if (w != m.kiln_name) others += (others.empty() ? "'" : ", '") + w + "'";
          throw Error("exporting '" + m.hf_names[j] + "': element " + std::to_string(local) +
                      " is made from '" + m.kiln_name + "' and from " + others +
                      " with different values (tied copies trained apart?)");
        }
      } else {
        std::memcpy(dst, src + e * es, es);
        r.written[local] = 1;
      }
    }
  }
  // Elements no mapping reads: the source's.
  for (auto& [hf, r] : rebuilt) {
    if (std::all_of(r.written.begin(), r.written.end(), [](uint8_t w) { return w != 0; })) continue;
    const Tensor original = source.get(hf).to(r.tensor.dtype());
    const size_t es = dtype_size(r.tensor.dtype());
    for (size_t i = 0; i < r.written.size(); ++i)
      if (!r.written[i])
        std::memcpy(static_cast<std::byte*>(r.tensor.mutable_raw()) + i * es,
                    static_cast<const std::byte*>(original.raw()) + i * es, es);
  }
  // The forward mapping of the rebuilt tensors must give the Kiln tensors back.
  for (const WeightMapping& m : mappings) {
    if (!m.transform && m.hf_names.size() == 1) continue;  // a copy: nothing to check
    std::vector<Tensor> inputs;
    for (const std::string& hf : m.hf_names) inputs.push_back(rebuilt.at(hf).tensor);
    const Tensor again = m.transform ? m.transform(inputs) : inputs.at(0);
    const Tensor expected = kiln(m.kiln_name)->to(again.dtype());
    const Tensor dense = again.contiguous();
    check(dense.shape() == expected.shape() &&
              std::memcmp(dense.raw(), expected.raw(), expected.nbytes()) == 0,
          "exporting " + mapping_text(m) +
              ": mapping the rebuilt tensors again does not give the Kiln tensor back (its "
              "transform does not only select elements)");
  }
  std::vector<std::pair<std::string, Tensor>> out;
  for (const std::string& name : source.names()) {
    auto it = rebuilt.find(name);
    if (it != rebuilt.end()) {
      out.emplace_back(name, std::move(it->second.tensor));
    } else {
      const Tensor t = source.get(name);
      out.emplace_back(name, dtype && is_float(t.dtype()) ? t.to(*dtype) : t.contiguous(true));
    }
  }
  return out;
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
