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

}  // namespace kiln::cli
