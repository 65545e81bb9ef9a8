// `kiln merge [BASE] --lora DIR -o OUT [--format hf|kiln]`: LoRA adapters (train/lora.h) merged
// into the base model's weights (W + alpha/r B A in f32, stored in W's dtype), written as a
// HuggingFace folder (the base's files, model.safetensors under its own tensor names) or a Kiln
// checkpoint (that folder converted). Atomic: OUT.partial is renamed at the end.
#include <filesystem>

#include "kiln/cli/command.h"
#include "kiln/convert/hf_to_kiln.h"
#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/loader.h"
#include "kiln/train/hf_export.h"
#include "kiln/train/lora.h"

namespace kiln::cli {
namespace {
namespace fs = std::filesystem;

// Writes the merged weights as the base's checkpoint tensors (in their dtypes) and the base
// folder's other files into `dir`.
void write_hf_folder(const LoadedModel& loaded, const std::string& dir) {
  fs::create_directories(dir);
  train::write_hf_folder(
      loaded,
      [&](const std::string& name) -> const Tensor* {
        auto it = loaded.weights.find(name);
        return it == loaded.weights.end() ? nullptr : &it->second;
      },
      dir, std::nullopt);
}

class MergeCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    add_model_options(app, model_path_, family_);
    app.add_option("--lora", lora_,
                   "the adapter folder (adapter_config.json, "
                   "adapter_model.safetensors) written by kiln train")
        ->required()
        ->check(CLI::ExistingDirectory);
    app.add_option("-o,--output", output_, "the folder to write")->required();
    app.add_option("--format", format_, "hf (default): a HuggingFace folder; kiln: a checkpoint")
        ->check(CLI::IsMember({"hf", "kiln"}));
  }

  int run() override {
    if (model_path_.empty()) model_path_ = default_model_path();
    check(!fs::exists(output_), output_ + ": already exists (choose a new output folder)");
    const std::string partial = output_ + ".partial";
    fs::remove_all(partial);
    try {
      LoadedModel loaded = load_model(model_path_, Residency::kResident, family_);
      const train::LoraWeights lora = train::load_lora(lora_, loaded);
      train::merge_lora(loaded.weights, lora);
      if (format_ == "hf") {
        write_hf_folder(loaded, partial);
      } else {
        const std::string hf = output_ + ".hf.partial";
        fs::remove_all(hf);
        write_hf_folder(loaded, hf);
        try {
          convert_hf_to_kiln(hf, partial, {});
        } catch (...) {
          fs::remove_all(hf);
          throw;
        }
        fs::remove_all(hf);
      }
      fs::rename(partial, output_);
      std::printf("merged %zu adapted modules (rank %lld, scale %g) into %s (%s)\n",
                  lora.modules.size(), static_cast<long long>(lora.rank), lora.scale,
                  output_.c_str(), format_.c_str());
      return 0;
    } catch (...) {
      std::error_code ec;
      fs::remove_all(partial, ec);
      throw;
    }
  }

 private:
  FamilyChoice family_;
  std::string model_path_, lora_, output_, format_ = "hf";
};

}  // namespace

KILN_COMMAND(MergeCommand, "merge",
             "merge LoRA adapters into a model; writes a HF folder or a Kiln checkpoint");

}  // namespace kiln::cli
