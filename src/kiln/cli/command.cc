#include "kiln/cli/command.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "kiln/core/error.h"
#include "kiln/models/gguf_model.h"

namespace kiln::cli {

std::vector<CommandInfo>& command_registry() {
  static std::vector<CommandInfo> registry;
  return registry;
}

bool register_command(CommandInfo info) {
  command_registry().push_back(std::move(info));
  return true;
}

std::string default_model_path() {
  if (const char* home = std::getenv("KILN_HOME")) {
    return (std::filesystem::path(home) / "models" / "tinycoder").string();
  }
  return (std::filesystem::path(KILN_SOURCE_DIR) / "models" / "tinycoder").string();
}

namespace {
// A check of the option's value read as a double; `what` completes "must be ...".
CLI::Validator number_check(const std::string& what, bool (*ok)(double)) {
  return CLI::Validator(
      [what, ok](std::string& value) -> std::string {
        double x = 0;
        try {
          size_t used = 0;
          x = std::stod(value, &used);
          if (used != value.size()) return "must be " + what + ", got '" + value + "'";
        } catch (const std::exception&) {
          return "must be " + what + ", got '" + value + "'";
        }
        return ok(x) ? "" : "must be " + what + ", got " + value;
      },
      what);
}
}  // namespace

CLI::Validator finite_non_negative() {
  return number_check("a finite number >= 0", [](double x) { return std::isfinite(x) && x >= 0; });
}
CLI::Validator finite_positive() {
  return number_check("a finite number > 0", [](double x) { return std::isfinite(x) && x > 0; });
}
CLI::Validator unit_interval() {
  return number_check("in (0, 1]", [](double x) { return x > 0 && x <= 1; });
}

std::optional<chat::ChatTemplate> find_chat_template(const std::string& model_path,
                                                     const std::string& explicit_path,
                                                     const std::string& without) {
  if (!explicit_path.empty()) return chat::ChatTemplate::load(explicit_path);
  try {
    return chat::ChatTemplate::load(model_path);
  } catch (const Error& e) {
    if (!without.empty())
      std::fprintf(stderr, "kiln: note: no chat template (%s): %s\n", e.what(), without.c_str());
    return std::nullopt;
  }
}

void add_model_options(CLI::App& app, std::string& model_path, FamilyChoice& choice) {
  app.add_option("model", model_path,
                 "HuggingFace model folder or Kiln checkpoint (default: bundled tinycoder)");
  add_family_options(app, choice);
}

void add_family_options(CLI::App& app, FamilyChoice& choice) {
  app.add_option("--family", choice.name,
                 "family: a built-in name, or 'auto' for the generic route (bypasses built-in "
                 "families); default: MODEL/kiln_family.json, else the built-in family, else auto");
  app.add_option("--family-file", choice.file, "a family file written by `kiln bringup`")
      ->check(CLI::ExistingFile);
  app.add_option_function<std::string>(
         "--gguf-weights",
         [](const std::string& name) { set_gguf_weights(parse_gguf_weights(name)); },
         "a .gguf model's quantized tensors: direct (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K run "
         "on Kiln's quantized kernels, Q5_0 and Q5_1 as f32; default), f32 or bf16 (all "
         "dequantized)")
      ->check(CLI::IsMember({"direct", "f32", "bf16"}));
}

}  // namespace kiln::cli
