#include "kiln/convert/orbax_export.h"

#include <filesystem>

#include "kiln/convert/atomic_output.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln {
namespace fs = std::filesystem;
namespace {

constexpr const char* kTreePrefix = "params/params/";
constexpr const char* kSidecar = "kiln_manifest.json";

}  // namespace

void export_kiln_to_orbax(const std::string& kiln_dir, const std::string& orbax_dir,
                          const OrbaxWriteOptions& options, bool force) {
  const KilnCheckpoint source(kiln_dir);
  AtomicOutputDir output(orbax_dir, force);
  OrbaxWriter writer(output.path(), options);
  for (const std::string& name : source.names()) writer.add(kTreePrefix + name, source.get(name));
  writer.finish();
  Json sidecar = source.manifest();
  sidecar.erase("tensors");
  sidecar.erase("files");
  sidecar.erase("tokenizer_files");
  Json layer_axes = Json::object();
  for (const auto& [name, entry] : source.manifest()["tensors"].items())
    if (entry.contains("layer_axis"))
      layer_axes[name] = {{"layer_axis", entry["layer_axis"]},
                          {"layer_group", entry["layer_group"]}};
  sidecar["layer_axes"] = layer_axes;
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
  try {
    info.model_spec = sidecar.value("model_spec", Json::object());
    info.source_config = sidecar.value("source_config", Json::object());
    info.layout = sidecar.value("layout", "unscanned");
    info.dtype = sidecar.value("dtype", "keep");
    if (sidecar.contains("layer_groups"))
      info.layer_groups =
          sidecar["layer_groups"].get<std::map<std::string, std::vector<int64_t>>>();
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
  for (const KilnTensorPlan& p : plan) writer.write(p.name, source.get(prefix + p.name));
  writer.finish();
  output.commit();
}

}  // namespace kiln
