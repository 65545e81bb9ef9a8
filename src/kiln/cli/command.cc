#include "kiln/cli/command.h"

#include <cstdlib>
#include <filesystem>

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

void add_family_options(CLI::App& app, FamilyChoice& choice) {
  app.add_option("--family", choice.name,
                 "family: a built-in name, or 'auto' for the generic route (bypasses built-in "
                 "families); default: MODEL/kiln_family.json, else the built-in family, else auto");
  app.add_option("--family-file", choice.file, "a family file written by `kiln bringup`")
      ->check(CLI::ExistingFile);
}

}  // namespace kiln::cli
