// `kiln inspect PATH`: the tensors of a HF folder, .safetensors / .bin file, Kiln checkpoint,
// Orbax checkpoint or llama.cpp .gguf file: names, dtypes, shapes, bytes, layout.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "kiln/cli/command.h"
#include "kiln/convert/orbax_export.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/hf_quantized.h"
#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"
#include "kiln/models/gguf_model.h"

namespace kiln::cli {
namespace {

class InspectCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("path", path_,
                   "Model folder, weights file, .gguf file, Kiln or Orbax checkpoint")
        ->required();
    app.add_flag("--json", json_, "Print one JSON object instead of a table");
    app.add_flag("--verify", verify_, "Kiln checkpoints: recompute every checksum");
    app.add_option("--config", config_,
                   "Orbax checkpoints without Kiln's sidecar: the model's config.json, to "
                   "describe its MaxText tree and the value changes MaxText's conversion made");
  }

  int run() override {
    const std::string format = detect_checkpoint_format(path_);
    if (format == "gguf") return inspect_gguf();
    std::unique_ptr<TensorSource> source = open_tensor_source(path_);
    std::string layout = "unscanned";
    if (auto* kiln = dynamic_cast<KilnCheckpoint*>(source.get())) {
      layout = kiln->layout();
      if (verify_) kiln->verify();
    } else {
      check(!verify_, path_ + ": --verify applies to Kiln checkpoints only");
    }
    // MaxText's tree (Orbax), or the MaxText origin of a Kiln checkpoint, with every value
    // change its conversion made and whether it lost information.
    std::vector<std::string> maxtext;
    if (auto* orbax = dynamic_cast<OrbaxSource*>(source.get())) {
      layout = orbax->uses_ocdbt() ? "ocdbt" : "zarr files";
      maxtext =
          describe_maxtext_tree(path_, config_.empty() ? Json::object() : read_json_file(config_));
    }
    if (auto* kiln = dynamic_cast<KilnCheckpoint*>(source.get()))
      maxtext = maxtext_provenance(kiln->manifest());
    std::vector<std::string> names = source->names();
    std::sort(names.begin(), names.end());
    // fp8 tensors (pre-quantized checkpoints) read as U8 bytes: shown as stored.
    const std::set<std::string> fp8 = safetensors_fp8_tensors(*source);
    Json tensors = Json::array();
    uint64_t total = 0;
    size_t width = 4;
    for (const std::string& name : names) {
      const Shape shape = source->shape_of(name);
      const DType dtype = source->dtype_of(name);
      const uint64_t bytes = dtype_nbytes(dtype, shape_numel(shape));
      total += bytes;
      width = std::max(width, name.size());
      tensors.push_back({{"name", name},
                         {"dtype", fp8.count(name) != 0 ? std::string("F8_E4M3")
                                                        : std::string(dtype_name(dtype))},
                         {"shape", shape},
                         {"bytes", bytes}});
    }
    if (json_) {
      std::cout << Json{{"path", path_},
                        {"format", format},
                        {"where", source->where()},
                        {"layout", layout},
                        {"num_tensors", names.size()},
                        {"total_bytes", total},
                        {"verified", verify_},
                        {"maxtext", maxtext},
                        {"tensors", tensors}}
                       .dump(2)
                << "\n";
      return 0;
    }
    std::cout << source->where() << ": " << format << ", " << layout << ", " << names.size()
              << " tensors, " << total << " bytes" << (verify_ ? ", checksums verified" : "")
              << "\n";
    for (const std::string& line : maxtext) std::cout << "  " << line << "\n";
    for (const Json& t : tensors) {
      std::printf("  %-*s  %-4s  %-20s  %12llu\n", static_cast<int>(width),
                  t["name"].get<std::string>().c_str(), t["dtype"].get<std::string>().c_str(),
                  shape_to_string(t["shape"].get<Shape>()).c_str(),
                  static_cast<unsigned long long>(t["bytes"].get<uint64_t>()));
    }
    return 0;
  }

 private:
  // A GGUF file as stored: its metadata (arrays summarized) and its tensors with their ggml
  // types, stored bytes and the HF names Kiln reads them under.
  int inspect_gguf() {
    check(!verify_, path_ + ": --verify applies to Kiln checkpoints only");
    const GgufFile gguf = GgufFile::open(path_);
    Json metadata = Json::object();
    for (const std::string& key : gguf.keys()) {
      const GgufValue& v = *gguf.find(key);
      metadata[key] = v.type == GgufType::kArray && v.value.size() > 8
                          ? Json("[" + std::to_string(v.value.size()) + " " +
                                 gguf_type_name(v.element_type) + " values]")
                          : v.value;
    }
    Json tensors = Json::array();
    uint64_t total = 0;
    size_t width = 4;
    for (const GgufTensorInfo& t : gguf.tensors()) {
      total += t.nbytes;
      width = std::max(width, t.name.size());
      tensors.push_back({{"name", t.name},
                         {"type", ggml_type_name(static_cast<uint32_t>(t.type))},
                         {"shape", t.shape},
                         {"bytes", t.nbytes},
                         {"hf_name", gguf_to_hf_name(t.name)}});
    }
    if (json_) {
      std::cout << Json{{"path", path_},
                        {"format", "gguf"},
                        {"version", gguf.version()},
                        {"alignment", gguf.alignment()},
                        {"metadata", metadata},
                        {"num_tensors", tensors.size()},
                        {"total_bytes", total},
                        {"tensors", tensors}}
                       .dump(2, ' ', false, Json::error_handler_t::replace)
                << "\n";
      return 0;
    }
    std::cout << path_ << ": gguf v" << gguf.version() << ", " << tensors.size() << " tensors, "
              << total << " bytes stored\n";
    for (const auto& [key, value] : metadata.items())
      std::cout << "  " << key << " = "
                << value.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
    for (const Json& t : tensors) {
      const std::string hf = t["hf_name"].get<std::string>();
      std::printf("  %-*s  %-5s  %-20s  %12llu  %s\n", static_cast<int>(width),
                  t["name"].get<std::string>().c_str(), t["type"].get<std::string>().c_str(),
                  shape_to_string(t["shape"].get<Shape>()).c_str(),
                  static_cast<unsigned long long>(t["bytes"].get<uint64_t>()),
                  hf.empty() ? "(not read)" : hf.c_str());
    }
    return 0;
  }

  std::string path_, config_;
  bool json_ = false, verify_ = false;
};

}  // namespace
KILN_COMMAND(InspectCommand, "inspect",
             "List the tensors, dtypes, shapes and layout of a model folder or checkpoint");
}  // namespace kiln::cli
