// `kiln analyze PATH`: the architecture analysis of a HuggingFace config (bring-up step 1).
#include <iostream>

#include "kiln/analyze/analyze.h"
#include "kiln/cli/command.h"

namespace kiln::cli {
namespace {

// Exit code when the analysis finds a feature or key this build does not support.
constexpr int kExitMissing = 2;

class AnalyzeCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("path", path_, "A HuggingFace model folder, its config.json, or a .gguf file")
        ->required();
    app.add_flag("--json", json_, "Print the report as JSON instead of markdown");
    app.footer(
        "Lists every architectural feature the config implies (for a multimodal wrapper, of its "
        "text_config), marks each supported or missing in this build and says where in src/kiln/ "
        "a missing one would go, and lists config keys Kiln does not understand.\n"
        "Exit status: 0 every feature supported and every key understood; 2 something is "
        "missing or not understood; 1 error (missing or malformed config).");
  }

  int run() override {
    analyze::Analysis analysis = analyze::analyze_config(path_);
    if (json_)
      std::cout << analysis.to_json().dump(2) << "\n";
    else
      std::cout << analysis.to_markdown();
    return analysis.fully_supported() ? 0 : kExitMissing;
  }

 private:
  std::string path_;
  bool json_ = false;
};

}  // namespace
KILN_COMMAND(AnalyzeCommand, "analyze",
             "Architecture analysis: which features of a config this build supports (exit 2 "
             "when something is missing)");
}  // namespace kiln::cli
