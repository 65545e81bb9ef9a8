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

bool any_nonzero(const Tensor& t) {
  const Tensor c = t.contiguous();
  const auto* bytes = static_cast<const char*>(c.raw());
  return std::any_of(bytes, bytes + c.nbytes(), [](char b) { return b != 0; });
}

struct Written {
  bool scaled = false;    // a query tensor: divided by the query divisor
  bool residual = false;  // its residual side array was written
};

// Writes Kiln tensor `name` in MaxText's layout as the array `array_name`: whole, or when
// stacked on `kiln_axis` >= 0 one layer at a time (memory holds one layer). A query's
// residual goes to the side array `residual_name` when some element is nonzero.
Written write_maxtext(const MaxTextLlamaLayout& layout, const std::string& name,
                      const Tensor& tensor, int kiln_axis, const std::string& array_name,
                      const std::string& residual_name, OrbaxWriter& writer) {
  if (kiln_axis < 0) {
    const MaxTextArray out = layout.to_maxtext(name, tensor);
    writer.add(array_name, out.array);
    Written written{out.residual.defined(), false};
    if (written.scaled && any_nonzero(out.residual)) {
      writer.add_side_array(residual_name, out.residual);
      written.residual = true;
    }
    return written;
  }
  const int64_t count = tensor.dim(kiln_axis);
  Shape stacked;
  int axis = 0;
  Written written;
  for (int64_t j = 0; j < count; ++j) {
    const MaxTextArray layer = layout.to_maxtext(name, tensor.select(kiln_axis, j));
    if (j == 0) {
      axis = maxtext_layer_axis(layer.array.ndim());
      stacked = layer.array.shape();
      stacked.insert(stacked.begin() + axis, count);
      writer.begin_layers(array_name, layer.array.dtype(), stacked, axis);
    }
    writer.add_layer(array_name, j, layer.array);
    written.scaled = layer.residual.defined();
    if (!written.scaled) continue;
    if (!written.residual && any_nonzero(layer.residual)) {
      // The first nonzero layer: earlier layers are all zero (stored as missing chunks).
      written.residual = true;
      writer.begin_layers(residual_name, DType::I8, stacked, axis, false);
      for (int64_t k = 0; k < j; ++k)
        writer.add_layer(residual_name, k, Tensor::zeros(DType::I8, layer.residual.shape()));
    }
    if (written.residual) writer.add_layer(residual_name, j, layer.residual);
  }
  return written;
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
    Json info = {{"kiln_shape", tensor.shape()}};
    const Written written =
        write_maxtext(*layout, name, tensor, entries[name].value("layer_axis", -1),
                      kTreePrefix + name, kResidualPrefix + name, writer);
    if (written.scaled)
      info["query_divisor"] = maxtext_query_divisor(layout->head_dim(), tensor.dtype());
    if (written.residual) info["residual"] = kResidualPrefix + name;
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
