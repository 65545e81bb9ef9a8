// `kiln inspect PATH`: the tensors of a HF folder, .safetensors / .bin file, Kiln checkpoint
// or Orbax checkpoint: names, dtypes, shapes, bytes, layout.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/checkpoint_source.h"
#include "kiln/io/json.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"

namespace kiln::cli {
namespace {

class InspectCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("path", path_, "Model folder, weights file, Kiln or Orbax checkpoint")
        ->required();
    app.add_flag("--json", json_, "Print one JSON object instead of a table");
    app.add_flag("--verify", verify_, "Kiln checkpoints: recompute every checksum");
  }

  int run() override {
    const std::string format = detect_checkpoint_format(path_);
    std::unique_ptr<TensorSource> source = open_tensor_source(path_);
    std::string layout = "unscanned";
    if (auto* kiln = dynamic_cast<KilnCheckpoint*>(source.get())) {
      layout = kiln->layout();
      if (verify_) kiln->verify();
    } else {
      check(!verify_, path_ + ": --verify applies to Kiln checkpoints only");
    }
    if (auto* orbax = dynamic_cast<OrbaxSource*>(source.get()))
      layout = orbax->uses_ocdbt() ? "ocdbt" : "zarr files";
    std::vector<std::string> names = source->names();
    std::sort(names.begin(), names.end());
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
                         {"dtype", std::string(dtype_name(dtype))},
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
                        {"tensors", tensors}}
                       .dump(2)
                << "\n";
      return 0;
    }
    std::cout << source->where() << ": " << format << ", " << layout << ", " << names.size()
              << " tensors, " << total << " bytes" << (verify_ ? ", checksums verified" : "")
              << "\n";
    for (const Json& t : tensors) {
      std::printf("  %-*s  %-4s  %-20s  %12llu\n", static_cast<int>(width),
                  t["name"].get<std::string>().c_str(), t["dtype"].get<std::string>().c_str(),
                  shape_to_string(t["shape"].get<Shape>()).c_str(),
                  static_cast<unsigned long long>(t["bytes"].get<uint64_t>()));
    }
    return 0;
  }

 private:
  std::string path_;
  bool json_ = false, verify_ = false;
};

}  // namespace
KILN_COMMAND(InspectCommand, "inspect",
             "List the tensors, dtypes, shapes and layout of a model folder or checkpoint");
}  // namespace kiln::cli
