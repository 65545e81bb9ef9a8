#include "kiln/convert/hf_to_kiln.h"
#include "kiln/models/language_model.h"

#include <fnmatch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "kiln/convert/atomic_output.h"
#include "kiln/core/error.h"
#include "kiln/core/page_release.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/hf_config.h"
#include "kiln/io/hf_quantized.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/safetensors_source.h"
#include "kiln/models/family.h"
#include "kiln/models/family_file.h"
#include "kiln/models/gguf_model.h"
#include "kiln/models/weight_names.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr const char* kLayerPrefix = "decoder/layers_";
// Files of the source folder that travel with the checkpoint: every tokenizer format
// Tokenizer::load reads, the chat template (chat/chat_template.h), generation_config.json and
// a family file (kiln_family.json).
bool travels_with_checkpoint(const std::string& name) {
  for (const char* exact :
       {"tokenizer.json", "tokenizer.json.zst", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "tiktoken.json",
        "chat_template.jinja", "chat_template.json", kFamilyFileName})
    if (name == exact) return true;
  for (const char* suffix : {".tiktoken", ".tiktoken.zst", ".tiktoken.json", ".model"})
    if (name.ends_with(suffix)) return true;
  return false;
}

// (layer, param) of "decoder/layers_<layer>/<param>", or nullopt for other names.
std::optional<std::pair<int64_t, std::string>> split_layer_name(const std::string& name) {
  if (name.rfind(kLayerPrefix, 0) != 0) return std::nullopt;
  const size_t digits = std::string(kLayerPrefix).size();
  const size_t slash = name.find('/', digits);
  if (slash == std::string::npos || slash == digits) return std::nullopt;
  const std::string number = name.substr(digits, slash - digits);
  if (number.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::make_pair(std::stoll(number), name.substr(slash + 1));
}

bool is_quantized_option(const std::string& option) {
  return option == "int8" || option == "int4" || option == "int4-128";
}

DType target_dtype(const std::string& option, DType source) {
  if (option == "keep" || !is_float(source) || is_quantized_option(option)) return source;
  if (option == "f32") return DType::F32;
  if (option == "bf16") return DType::BF16;
  if (option == "f16") return DType::F16;
  throw Error("--dtype must be keep, f32, bf16, f16, int8, int4 or int4-128, not '" + option + "'");
}

bool matches_any(const std::vector<std::string>& globs, const std::string& name) {
  for (const std::string& glob : globs)
    if (::fnmatch(glob.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

// Where each mapped tensor goes: whole, or at a position of a stacked tensor.
struct Destination {
  std::string name;
  int64_t position = -1;  // >= 0: layer position in a scanned tensor
};

// Where a tensor's raw bytes lie in a file.
struct FileLocation {
  std::string path;
  uint64_t offset;
};

// The file location of `tensor` (source's `name`) when the source is safetensors and the
// tensor is a contiguous view of its mapping (view offsets are file offsets); nullopt for
// other sources and for tensors the reader had to copy.
std::optional<FileLocation> file_location(const TensorSource& source, const std::string& name,
                                          const Tensor& tensor) {
  if (tensor.writable() || !tensor.is_contiguous()) return std::nullopt;
  // The tensors a pre-quantized checkpoint stores unquantized are views of its files.
  if (const auto* quantized = dynamic_cast<const QuantizedHfSource*>(&source))
    return file_location(quantized->inner(), name, tensor);
  const auto* safetensors = dynamic_cast<const SafetensorsSource*>(&source);
  if (safetensors == nullptr) return std::nullopt;
  return FileLocation{safetensors->set().file_of(name), tensor.offset()};
}

// A tied embedding doubles as the output matrix, read whole for every token: a quantized
// conversion also stores it as `decoder/logits_dense/kernel` in the output matrix's format
// (Q8_0 for int8, the checkpoint's own 4-bit format for int4 / int4-128, or --head-dtype's;
// quantized_dtype_for), which the model then multiplies with instead, while the
// embedding lookup keeps reading the unquantized table (one row per token) and recomputes each
// row's top logits from it (Model: the copy alone, its weights and the int8 activations of its
// kernels rounded, cost tinycoder's int8 its 99% top-1 agreement with bf16, 98.8%; with the
// refinement 99.1%, as the bf16 head).
// Not when `keep` keeps the head unquantized, or the embedding is itself quantized
// (`quantize`): the table then serves as the head as it is.
void add_tied_head_copy(const ModelSpec& spec, const TensorSource& source,
                        const ConvertOptions& options, std::vector<WeightMapping>& mappings) {
  if (!spec.tie_word_embeddings) return;
  const std::string embedding = names::embedding(names::token_embedder());
  const std::string head = names::kernel(names::lm_head());
  const WeightMapping* table = nullptr;
  for (const WeightMapping& m : mappings) {
    if (m.kiln_name == head) return;  // the family maps a head of its own
    if (m.kiln_name == embedding) table = &m;
  }
  if (!table || table->hf_names.empty() || !source.contains(table->hf_names[0])) return;
  const DType stored = source.dtype_of(table->hf_names[0]);
  const DType table_dtype = quantized_dtype_for(options.dtype, embedding, table->shape, stored,
                                                options.keep, options.quantize);
  const DType head_dtype = quantized_dtype_for(options.dtype, head, table->shape, stored,
                                               options.keep, options.quantize, options.head_dtype);
  if (!is_quantized(head_dtype) || is_quantized(table_dtype)) return;
  WeightMapping copy = *table;
  copy.kiln_name = head;
  mappings.push_back(std::move(copy));
}

}  // namespace

DType quantized_dtype_for(const std::string& dtype, const std::string& name, const Shape& shape,
                          DType source, const std::vector<std::string>& keep,
                          const std::vector<std::string>& quantize, const std::string& head_dtype) {
  check(is_quantized_option(dtype), "--dtype '" + dtype + "' is not int8, int4 or int4-128");
  check(head_dtype.empty() || is_quantized_option(head_dtype),
        "--head-dtype '" + head_dtype + "' is not int8, int4 or int4-128");
  if (!is_float(source) || matches_any(keep, name)) return source;
  auto format_of = [](const std::string& option) {
    return option == "int8" ? DType::Q8_0 : option == "int4" ? DType::Q4_1 : DType::Q4_1_128;
  };
  const DType format = format_of(dtype);
  // An output matrix whose rows are not whole blocks of the format: the next smaller one.
  auto fitting = [&](DType wanted) {
    if (shape.empty() || shape.back() % 32 != 0) return source;
    if (shape.back() % dtype_block(wanted) != 0) return DType::Q4_1;
    return wanted;
  };
  if (name == "decoder/logits_dense/kernel" && !head_dtype.empty())
    return fitting(format_of(head_dtype));
  if (matches_any(quantize, name)) return fitting(format);
  const bool linear_kernel = name.ends_with("/kernel") && (shape.size() == 2 || shape.size() == 3);
  const bool read_elsewhere = name.ends_with("/gate/kernel") ||
                              name.find("shared_expert_gate") != std::string::npos ||
                              name.find("/wkv_b/") != std::string::npos;
  if (!linear_kernel || read_elsewhere) return source;
  if (name == "decoder/logits_dense/kernel") return fitting(format_of(head_dtype_default(dtype)));
  return fitting(format);
}

std::string head_dtype_default(const std::string& dtype) {
  check(is_quantized_option(dtype), "--dtype '" + dtype + "' is not int8, int4 or int4-128");
  // int4 and int4-128 store the head in their own format: on tinycoder the same top-1 agreement
  // as an int8 head (92.15%, 90.04%), the top logits being the table's (Model::head), at a KL
  // mean 7% higher; half of int8's bytes, the largest single read of a 1B model's decode step.
  return dtype;
}

namespace {

// Everything convert_hf_to_kiln decides before writing: the source, the family's mappings,
// each mapping's stored dtype and destination, and the checkpoint's plan.
struct HfKilnPlan {
  bool gguf = false;
  std::shared_ptr<const Family> family;
  ModelSpec spec;
  std::unique_ptr<TensorSource> source;
  std::vector<WeightMapping> mappings;
  std::vector<DType> dtypes;
  KilnCheckpointInfo info;
  std::vector<KilnTensorPlan> plan;
  std::vector<Destination> destinations;

  // Mapping k's tensor in its Kiln shape, before any dtype change; `inputs` receives the
  // source tensors it was made from.
  Tensor tensor(size_t k, std::vector<Tensor>& inputs) const {
    const WeightMapping& m = mappings[k];
    inputs.clear();
    for (const std::string& hf_name : m.hf_names) {
      check(source->contains(hf_name), source->where() + ": missing tensor '" + hf_name +
                                           "' (needed for '" + m.kiln_name + "')");
      inputs.push_back(source->get(hf_name));
    }
    Tensor t = m.transform ? m.transform(inputs) : inputs[0];
    check(t.shape() == m.shape, source->where() + ": tensor '" + m.hf_names[0] + "' has shape " +
                                    t.shape_string() + ", expected " + shape_to_string(m.shape) +
                                    " (for '" + m.kiln_name + "')");
    return t;
  }
};

HfKilnPlan plan_hf_to_kiln(const std::string& source_dir, const ConvertOptions& options) {
  HfKilnPlan out;
  check(options.layout == "scanned" || options.layout == "unscanned",
        "--layout must be scanned or unscanned, not '" + options.layout + "'");
  target_dtype(options.dtype, DType::F32);  // validates the option before any work
  // A .gguf file: its metadata is the config, its vocabulary becomes tokenizer.json.
  const bool gguf = is_gguf_model(source_dir);
  out.gguf = gguf;
  const HfConfig config =
      gguf ? gguf_hf_config(GgufFile::open(source_dir)) : HfConfig::load(source_dir);
  const std::string family_dir = gguf ? fs::path(source_dir).parent_path().string() : source_dir;
  const std::shared_ptr<const Family> chosen = choose_family(config, family_dir, options.family);
  const Family& family = *chosen;
  out.family = chosen;
  ModelSpec& spec = out.spec;
  spec = family.build_spec(config);
  spec.family = family.name();
  // Mapped, not resident: every borrowed tensor of the source is then a view of a file
  // mapping, whose pages are dropped once used (release_borrowed_inputs below).
  // Pre-quantized (fp8, MXFP4) weights are dequantized: to bf16 for --dtype keep/bf16 (what
  // the published models' own bf16 casts hold), else to f32, the exact product, from which the
  // target dtype is rounded once.
  out.source = open_model_source(source_dir, config, Residency::kMapped);
  const std::unique_ptr<TensorSource>& source = out.source;
  if (auto* quantized = dynamic_cast<QuantizedHfSource*>(source.get()))
    quantized->set_dequantized_dtype(
        options.dtype == "keep" || options.dtype == "bf16" ? DType::BF16 : DType::F32);
  family.refine_spec(spec, *source);
  out.mappings = family.map_weights(spec, *source);
  check(options.head_dtype.empty() || is_quantized_option(options.dtype),
        "--head-dtype " + options.head_dtype +
            " needs a quantized --dtype (int8, int4 or "
            "int4-128), not '" +
            options.dtype + "'");
  if (is_quantized_option(options.dtype)) add_tied_head_copy(spec, *source, options, out.mappings);
  const std::vector<WeightMapping>& mappings = out.mappings;

  // Per mapping: the dtype it is stored in.
  std::vector<DType>& dtypes = out.dtypes;
  for (const WeightMapping& m : mappings) {
    check(!m.hf_names.empty() && source->contains(m.hf_names[0]),
          source->where() + ": missing tensor '" + (m.hf_names.empty() ? "" : m.hf_names[0]) +
              "' (needed for '" + m.kiln_name + "')");
    const DType stored = source->dtype_of(m.hf_names[0]);
    dtypes.push_back(is_quantized_option(options.dtype)
                         ? quantized_dtype_for(options.dtype, m.kiln_name, m.shape, stored,
                                               options.keep, options.quantize, options.head_dtype)
                         : target_dtype(options.dtype, stored));
  }

  KilnCheckpointInfo& info = out.info;
  info.model_spec = spec.to_json();
  info.source_config = config.json();
  info.layout = options.layout;
  info.dtype = options.dtype;
  std::vector<KilnTensorPlan>& plan = out.plan;
  std::vector<Destination>& destinations = out.destinations;
  destinations.resize(mappings.size());
  if (options.layout == "unscanned") {
    for (size_t k = 0; k < mappings.size(); ++k) {
      plan.push_back({mappings[k].kiln_name, dtypes[k], mappings[k].shape, -1, ""});
      destinations[k].name = mappings[k].kiln_name;
    }
  } else {
    // Group layers by their parameter signature (names, shapes, dtypes).
    std::map<int64_t, std::map<std::string, std::pair<Shape, DType>>> layers;
    for (size_t k = 0; k < mappings.size(); ++k)
      if (auto split = split_layer_name(mappings[k].kiln_name))
        layers[split->first][split->second] = {mappings[k].shape, dtypes[k]};
    std::vector<std::pair<std::map<std::string, std::pair<Shape, DType>>, std::vector<int64_t>>>
        groups;
    std::map<int64_t, std::pair<size_t, int64_t>> place;  // layer -> (group, position)
    for (const auto& [layer, signature] : layers) {
      size_t g = 0;
      while (g < groups.size() && groups[g].first != signature) ++g;
      if (g == groups.size()) groups.push_back({signature, {}});
      place[layer] = {g, static_cast<int64_t>(groups[g].second.size())};
      groups[g].second.push_back(layer);
    }
    auto group_name = [&](size_t g) {
      return groups.size() == 1 ? std::string("layers") : "layers_group" + std::to_string(g);
    };
    for (size_t g = 0; g < groups.size(); ++g) {
      info.layer_groups[group_name(g)] = groups[g].second;
      const int64_t count = static_cast<int64_t>(groups[g].second.size());
      for (const auto& [param, shape_dtype] : groups[g].first) {
        Shape stacked = shape_dtype.first;
        const int axis = stacked.empty() ? 0 : 1;
        stacked.insert(stacked.begin() + axis, count);
        plan.push_back({"decoder/" + group_name(g) + "/" + param, shape_dtype.second, stacked, axis,
                        group_name(g)});
      }
    }
    for (size_t k = 0; k < mappings.size(); ++k) {
      if (auto split = split_layer_name(mappings[k].kiln_name)) {
        const auto [g, position] = place.at(split->first);
        destinations[k] = {"decoder/" + group_name(g) + "/" + split->second, position};
      } else {
        plan.push_back({mappings[k].kiln_name, dtypes[k], mappings[k].shape, -1, ""});
        destinations[k].name = mappings[k].kiln_name;
      }
    }
  }

  return out;
}

}  // namespace

void convert_hf_to_kiln(const std::string& source_dir, const std::string& destination,
                        const ConvertOptions& options) {
  HfKilnPlan p = plan_hf_to_kiln(source_dir, options);
  const bool gguf = p.gguf;
  const std::unique_ptr<TensorSource>& source = p.source;
  const std::vector<WeightMapping>& mappings = p.mappings;
  const std::vector<DType>& dtypes = p.dtypes;
  const KilnCheckpointInfo& info = p.info;
  const std::vector<KilnTensorPlan>& plan = p.plan;
  const std::vector<Destination>& destinations = p.destinations;
  AtomicOutputDir output(destination, options.force);
  KilnCheckpointWriter::Options writer_options;
  writer_options.max_shard_bytes = options.max_shard_bytes;
  writer_options.release_borrowed_inputs = true;
  KilnCheckpointWriter writer(output.path(), info, plan, writer_options);
  uint64_t bytes = 0;
  struct Stacked {
    std::vector<std::pair<std::string, uint64_t>> sources;  // per layer position
    std::vector<bool> have;
    size_t count = 0;
    DType dtype = DType::F32;
    Shape layer_shape;
  };
  std::map<std::string, Stacked> stacked;
  std::map<std::string, int64_t> stacked_layers;  // scanned tensor -> layers
  for (const KilnTensorPlan& p : plan)
    if (p.layer_axis >= 0) stacked_layers[p.name] = p.shape[p.layer_axis];
  for (size_t k = 0; k < mappings.size(); ++k) {
    const WeightMapping& m = mappings[k];
    std::vector<Tensor> inputs;
    Tensor tensor = p.tensor(k, inputs);
    const Destination& to = destinations[k];
    const std::optional<FileLocation> raw = m.transform || tensor.dtype() != dtypes[k]
                                                ? std::nullopt
                                                : file_location(*source, m.hf_names[0], tensor);
    if (raw && to.position >= 0) {
      // Gathered until every layer of the stacked tensor is known, then written in file order.
      Stacked& st = stacked[to.name];
      if (st.sources.empty()) {
        st.sources.resize(static_cast<size_t>(stacked_layers.at(to.name)));
        st.have.resize(st.sources.size(), false);
        st.dtype = tensor.dtype();
        st.layer_shape = tensor.shape();
      }
      if (!st.have[to.position] && st.dtype == tensor.dtype() && st.layer_shape == tensor.shape()) {
        st.sources[to.position] = {raw->path, raw->offset};
        st.have[to.position] = true;
        if (++st.count == st.sources.size()) {
          writer.write_stacked_from_files(to.name, st.dtype, st.layer_shape, st.sources);
          stacked.erase(to.name);
        }
      } else {  // let the writer report the mismatch
        writer.write_layer_from_file(to.name, to.position, tensor.dtype(), tensor.shape(),
                                     raw->path, raw->offset);
      }
    } else if (raw) {
      writer.write_from_file(to.name, tensor.dtype(), tensor.shape(), raw->path, raw->offset);
    } else {
      if (tensor.dtype() != dtypes[k]) tensor = tensor.to(dtypes[k]);
      if (to.position >= 0)
        writer.write_layer(to.name, to.position, tensor);
      else
        writer.write(to.name, tensor);
      for (const Tensor& input : inputs)
        if (!input.writable() && input.is_contiguous())
          release_mapped_pages(input.raw(), input.nbytes());
    }
    bytes += tensor.nbytes();
    if (options.progress) options.progress(k + 1, mappings.size(), bytes);
  }
  // Stacked tensors some of whose layers were rebuilt (a transform, another dtype): their
  // file-backed layers one by one.
  for (const auto& [name, st] : stacked)
    for (size_t j = 0; j < st.sources.size(); ++j)
      if (st.have[j])
        writer.write_layer_from_file(name, static_cast<int64_t>(j), st.dtype, st.layer_shape,
                                     st.sources[j].first, st.sources[j].second);
  if (gguf) {
    const GgufFile file = GgufFile::open(source_dir);
    if (file.has("tokenizer.ggml.model")) {
      // Written beside the checkpoint's staging folder, then copied in by the writer.
      const fs::path staging = fs::path(output.path()).string() + ".tokenizer";
      fs::create_directories(staging);
      const fs::path json = staging / "tokenizer.json";
      {
        std::ofstream out(json, std::ios::binary);
        out << gguf_tokenizer_json(file);
        check(static_cast<bool>(out), json.string() + ": cannot write");
      }
      writer.add_tokenizer_file(json.string());
      fs::remove_all(staging);
    }
  } else {
    for (const auto& entry : fs::directory_iterator(source_dir))
      if (entry.is_regular_file() && travels_with_checkpoint(entry.path().filename().string()))
        writer.add_tokenizer_file(entry.path().string());
  }
  writer.finish();
  output.commit();
}

namespace {

class HfAsKiln : public KilnTensorSet {
 public:
  HfAsKiln(const std::string& source_dir, const ConvertOptions& options)
      : plan_(plan_hf_to_kiln(source_dir, options)), where_(source_dir) {
    check(!is_quantized_option(options.dtype),
          source_dir + ": --dtype " + options.dtype +
              " is a quantized format; only float dtypes are served without conversion");
    const KilnCheckpointInfo& info = plan_.info;
    Json tensors = Json::object();
    for (const KilnTensorPlan& t : plan_.plan) {
      Json entry = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}};
      if (t.layer_axis >= 0) {
        entry["layer_axis"] = t.layer_axis;
        entry["layer_group"] = t.layer_group;
      }
      tensors[t.name] = entry;
      names_.push_back(t.name);
    }
    manifest_ = {{"format", "kiln-checkpoint"},
                 {"format_version", 1},
                 {"kiln_version", KILN_VERSION},
                 {"model_spec", info.model_spec},
                 {"source_config", info.source_config},
                 {"layout", info.layout},
                 {"dtype", info.dtype},
                 {"tensors", tensors}};
    if (info.layout == "scanned") manifest_["layer_groups"] = info.layer_groups;
    for (size_t k = 0; k < plan_.mappings.size(); ++k) by_name_[plan_.mappings[k].kiln_name] = k;
  }

  const Json& manifest() const override { return manifest_; }
  std::vector<std::string> names() const override { return names_; }
  std::string where() const override { return where_; }

  Tensor get(const std::string& name) const override {
    const auto it = by_name_.find(name);
    check(it != by_name_.end() && plan_.destinations[it->second].position < 0,
          where_ + ": no unstacked Kiln tensor '" + name + "'");
    return compute(it->second);
  }

  Tensor layer_tensor(int64_t layer, const std::string& param) const override {
    const std::string name = std::string(kLayerPrefix) + std::to_string(layer) + "/" + param;
    const auto it = by_name_.find(name);
    check(it != by_name_.end(), where_ + ": no Kiln tensor '" + name + "'");
    return compute(it->second);
  }

 private:
  Tensor compute(size_t k) const {
    std::vector<Tensor> inputs;
    Tensor t = plan_.tensor(k, inputs);
    const bool rebuilt = plan_.mappings[k].transform || t.dtype() != plan_.dtypes[k];
    if (t.dtype() != plan_.dtypes[k]) t = t.to(plan_.dtypes[k]);
    if (rebuilt)
      for (const Tensor& input : inputs)  // the source's pages are no longer needed
        if (!input.writable() && input.is_contiguous())
          release_mapped_pages(input.raw(), input.nbytes());
    return t;
  }

  HfKilnPlan plan_;
  std::string where_;
  Json manifest_;
  std::vector<std::string> names_;
  std::map<std::string, size_t> by_name_;
};

}  // namespace

std::unique_ptr<KilnTensorSet> open_hf_as_kiln(const std::string& source,
                                               const ConvertOptions& options) {
  return std::make_unique<HfAsKiln>(source, options);
}

}  // namespace kiln
