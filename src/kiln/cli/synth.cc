// `kiln synth SHAPE -o DIR`: a random HuggingFace folder of a real model's shape.
#include <chrono>
#include <iostream>

#include "kiln/cli/command.h"
#include "kiln/convert/synth.h"
#include "kiln/core/error.h"

namespace kiln::cli {
namespace {

class SynthCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    std::string names;
    for (const auto& s : synth_shapes()) names += (names.empty() ? "" : ", ") + s;
    app.add_option("shape", shape_, "Model shape: " + names)->required();
    app.add_option("-o,--output", output_, "Output folder")->required();
    app.add_option("--dtype", dtype_, "Weight dtype: bf16, f16 or f32")
        ->check(CLI::IsMember({"bf16", "f16", "f32"}));
    app.add_option("--seed", seed_, "Random seed");
    app.add_option("--layers", layers_, "Override the number of layers (0 = the shape's own)");
    app.add_option("--shard-mb", shard_mb_, "Target shard size in MiB");
    app.add_flag("--force", force_, "Replace an existing output folder");
  }

  int run() override {
    SynthOptions options;
    options.dtype = dtype_ == "f32" ? DType::F32 : dtype_ == "f16" ? DType::F16 : DType::BF16;
    options.seed = seed_;
    options.layers = layers_;
    options.force = force_;
    check(shard_mb_ > 0, "--shard-mb must be positive");
    options.shard_bytes = shard_mb_ << 20;
    auto start = std::chrono::steady_clock::now();
    uint64_t bytes = synth_model(shape_, output_, options);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "wrote " << output_ << ": " << shape_ << ", " << bytes / 1e9
              << " GB of weights in " << seconds << " s\n";
    return 0;
  }

 private:
  std::string shape_, output_, dtype_ = "bf16";
  uint64_t seed_ = 0, shard_mb_ = 2048;
  int64_t layers_ = 0;
  bool force_ = false;
};

}  // namespace
KILN_COMMAND(SynthCommand, "synth",
             "Write a random HuggingFace model folder of a named real shape");
}  // namespace kiln::cli
