// Entry point of the `kiln` command: builds the CLI from the registered subcommands.
#include <cstdio>
#include <iostream>
#include <memory>
#include <vector>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"

int main(int argc, char** argv) {
  CLI::App app{
      "Kiln: bring up new LLM architectures, verify them against the reference, run them."};
  app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, std::unique_ptr<kiln::cli::Command>>> commands;
  for (const auto& info : kiln::cli::command_registry()) {
    CLI::App* sub = app.add_subcommand(info.name, info.help);
    auto command = info.make();
    command->configure(*sub);
    commands.emplace_back(sub, std::move(command));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, command] : commands)
      if (sub->parsed()) return command->run();
  } catch (const kiln::Error& e) {
    std::fflush(stdout);
    std::cerr << "kiln: error: " << e.what() << std::endl;
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "kiln: error: out of memory" << std::endl;
    return 1;
  }
  return 0;
}
