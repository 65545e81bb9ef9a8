#include "kiln/convert/orbax_export.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>

#include "kiln/convert/atomic_output.h"
#include "kiln/convert/maxtext_llama.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr const char* kTreePrefix = "params/params/";
constexpr const char* kResidualPrefix = "kiln_residual/";
constexpr const char* kSidecar = "kiln_manifest.json";

// The axis MaxText stacks layers on: 1, after the first dimension of each per-layer array
// (0 for per-layer scalars).
int maxtext_layer_axis(int per_layer_rank) {
  return per_layer_rank >= 1 ? 1 : 0;
}

// Copies `layer` into position `position` of `stacked`'s axis `axis`.
void put_layer(Tensor& stacked, int axis, int64_t position, const Tensor& layer) {
  const Tensor src = layer.contiguous();
  int64_t outer = 1;
  for (int d = 0; d < axis; ++d) outer *= stacked.dim(d);
  const int64_t count = stacked.dim(axis);
  const size_t inner = src.nbytes() / static_cast<size_t>(outer);
  auto* dst = static_cast<char*>(stacked.mutable_raw());
  const auto* from = static_cast<const char*>(src.raw());
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(dst + (o * count + position) * inner, from + o * inner, inner);
}

bool any_nonzero(const Tensor& t) {
  const auto* bytes = static_cast<const char*>(t.raw());
  return std::any_of(bytes, bytes + t.nbytes(), [](char b) { return b != 0; });
}

// Kiln tensor `name` (whole; stacked on `kiln_axis` when >= 0) in MaxText's layout.
MaxTextArray to_maxtext(const MaxTextLlamaLayout& layout, const std::string& name,
                        const Tensor& tensor, int kiln_axis) {
  if (kiln_axis < 0) return layout.to_maxtext(name, tensor);
  MaxTextArray stacked;
  const int64_t count = tensor.dim(kiln_axis);
  for (int64_t j = 0; j < count; ++j) {
    const MaxTextArray layer = layout.to_maxtext(name, tensor.select(kiln_axis, j));
    const int axis = maxtext_layer_axis(layer.array.ndim());
    if (j == 0) {
      Shape shape = layer.array.shape();
      shape.insert(shape.begin() + axis, count);
      stacked.array = Tensor::zeros(layer.array.dtype(), shape);
      if (layer.residual.defined()) stacked.residual = Tensor::zeros(DType::I8, shape);
    }
    put_layer(stacked.array, axis, j, layer.array);
    if (layer.residual.defined()) put_layer(stacked.residual, axis, j, layer.residual);
  }
  return stacked;
}

}  // namespace

void export_kiln_to_orbax(const std::string& kiln_dir, const std::string& orbax_dir,
                          const OrbaxWriteOptions& options, bool force) {
  const KilnCheckpoint source(kiln_dir);
  const Json& entries = source.manifest()["tensors"];
  const std::optional<MaxTextLlamaLayout> layout =
      MaxTextLlamaLayout::for_config(source.manifest().value("source_config", Json::object()));
  AtomicOutputDir output(orbax_dir, force);
  OrbaxWriter writer(output.path(), options);
  Json maxtext_tensors = Json::object();
  for (const std::string& name : source.names()) {
    const Tensor tensor = source.get(name);
    if (!layout) {
      writer.add(kTreePrefix + name, tensor);
      continue;
    }
    const MaxTextArray out =
        to_maxtext(*layout, name, tensor, entries[name].value("layer_axis", -1));
    writer.add(kTreePrefix + name, out.array);
    Json info = {{"kiln_shape", tensor.shape()}};
    if (out.residual.defined()) {
      info["query_divisor"] = maxtext_query_divisor(layout->head_dim(), tensor.dtype());
      if (any_nonzero(out.residual)) {
        writer.add_side_array(kResidualPrefix + name, out.residual);
        info["residual"] = kResidualPrefix + name;
      }
    }
    maxtext_tensors[name] = info;
  }
  writer.add("step", Tensor::zeros(DType::I32, {}));  // MaxText's TrainState.step
  writer.finish();
  Json sidecar = source.manifest();
  sidecar.erase("tensors");
  sidecar.erase("files");
  sidecar.erase("tokenizer_files");
  Json layer_axes = Json::object();
  for (const auto& [name, entry] : entries.items())
    if (entry.contains("layer_axis"))
      layer_axes[name] = {{"layer_axis", entry["layer_axis"]},
                          {"layer_group", entry["layer_group"]}};
  sidecar["layer_axes"] = layer_axes;
  if (layout) {
    sidecar["maxtext"] = layout->to_json();
    sidecar["maxtext"]["tensors"] = maxtext_tensors;
  }
  write_json_file((fs::path(writer.item_dir()) / kSidecar).string(), sidecar);
  output.commit();
}

void import_orbax_to_kiln(const std::string& orbax_dir, const std::string& kiln_dir,
                          const KilnCheckpointWriter::Options& options, bool force) {
  const OrbaxSource source(orbax_dir);
  const std::string sidecar_path = (fs::path(source.where()) / kSidecar).string();
  const Json sidecar = fs::exists(sidecar_path) ? read_json_file(sidecar_path) : Json::object();
  KilnCheckpointInfo info;
  const Json layer_axes = sidecar.value("layer_axes", Json::object());
  std::optional<MaxTextLlamaLayout> layout;
  Json maxtext_tensors = Json::object();
  try {
    info.model_spec = sidecar.value("model_spec", Json::object());
    info.source_config = sidecar.value("source_config", Json::object());
    info.layout = sidecar.value("layout", "unscanned");
    info.dtype = sidecar.value("dtype", "keep");
    if (sidecar.contains("layer_groups"))
      info.layer_groups =
          sidecar["layer_groups"].get<std::map<std::string, std::vector<int64_t>>>();
    if (sidecar.contains("maxtext")) {
      layout = MaxTextLlamaLayout::from_json(sidecar["maxtext"], sidecar_path);
      maxtext_tensors = sidecar["maxtext"].at("tensors");
    }
  } catch (const Json::exception& e) {
    throw Error(sidecar_path + ": malformed: " + e.what());
  }
  std::vector<KilnTensorPlan> plan;
  const std::string prefix = kTreePrefix;
  for (const std::string& array : source.names()) {
    if (array.rfind(prefix, 0) != 0) continue;
    KilnTensorPlan p;
    p.name = array.substr(prefix.size());
    p.dtype = source.dtype_of(array);
    p.shape = source.shape_of(array);
    if (layout) {
      check(maxtext_tensors.contains(p.name) && maxtext_tensors[p.name].contains("kiln_shape"),
            sidecar_path + ": no MaxText entry for array '" + array + "'");
      p.shape = maxtext_tensors[p.name]["kiln_shape"].get<Shape>();
    }
    if (layer_axes.contains(p.name)) {
      p.layer_axis = layer_axes[p.name].value("layer_axis", -1);
      p.layer_group = layer_axes[p.name].value("layer_group", "");
    } else {
      check(p.name.rfind("decoder/layers/", 0) != 0,
            source.where() + ": array '" + array + "' is stacked over layers, but without " +
                kSidecar + " its layer axis is unknown (convert from the HF checkpoint instead)");
    }
    plan.push_back(std::move(p));
  }
  check(!plan.empty(), source.where() + ": no arrays under " + prefix);
  AtomicOutputDir output(kiln_dir, force);
  KilnCheckpointWriter writer(output.path(), info, plan, options);
  for (const KilnTensorPlan& p : plan) {
    const Tensor array = source.get(prefix + p.name);
    if (!layout) {
      writer.write(p.name, array);
      continue;
    }
    const Json& entry = maxtext_tensors[p.name];
    Tensor residual;
    if (entry.contains("query_divisor"))
      check(entry["query_divisor"].get<double>() ==
                maxtext_query_divisor(layout->head_dim(), array.dtype()),
            sidecar_path + ": query divisor of '" + p.name + "' is not sqrt(head_dim) in " +
                std::string(dtype_name(array.dtype())));
    if (entry.contains("residual")) {
      residual = source.get_side_array(entry["residual"].get<std::string>());
      check(residual.defined(),
            source.where() + ": missing side array " + entry["residual"].dump());
    }
    if (p.layer_axis < 0) {
      writer.write(p.name, layout->from_maxtext(p.name, array, residual));
      continue;
    }
    const int axis = maxtext_layer_axis(array.ndim() - 1);
    for (int64_t j = 0; j < array.dim(axis); ++j)
      writer.write_layer(
          p.name, j,
          layout->from_maxtext(p.name, array.select(axis, j),
                               residual.defined() ? residual.select(axis, j) : Tensor()));
  }
  writer.finish();
  output.commit();
}

}  // namespace kiln
