// The `kiln` subcommand registry. Each subcommand lives in its own file under cli/ and
// registers itself with KILN_COMMAND; main.cc builds the CLI11 app from the registry.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/chat/chat_template.h"
#include "kiln/models/family_file.h"

namespace kiln::cli {

// A subcommand: configure() declares its options on its CLI11 sub-app (binding them to
// members); run() executes after parsing and returns the process exit code. Errors are
// thrown as kiln::Error; main prints them as one line and exits 1.
class Command {
 public:
  virtual ~Command() = default;
  virtual void configure(CLI::App& app) = 0;
  virtual int run() = 0;
};

struct CommandInfo {
  std::string name;
  std::string help;
  std::function<std::unique_ptr<Command>()> make;
};

// Registered commands, in registration order.
std::vector<CommandInfo>& command_registry();
bool register_command(CommandInfo info);

// The bundled default model folder (models/tinycoder beside the executable's source tree,
// or $KILN_HOME/models/tinycoder).
std::string default_model_path();

// Declares the optional MODEL argument (a HuggingFace folder or Kiln checkpoint; default: the
// bundled tinycoder, see default_model_path()) and the family options below.
void add_model_options(CLI::App& app, std::string& model_path, FamilyChoice& choice);

// Declares `--family NAME|auto` and `--family-file PATH` (models/family_file.h), bound to
// `choice`.
void add_family_options(CLI::App& app, FamilyChoice& choice);

// The chat template to use: `explicit_path` (a .jinja file, tokenizer_config.json or folder)
// when given (errors propagate), else the model's own, else nullopt with a note on stderr
// saying what `without` means ("/v1/chat/completions answers 400").
std::optional<chat::ChatTemplate> find_chat_template(const std::string& model_path,
                                                     const std::string& explicit_path,
                                                     const std::string& without);

// Option checks with plain messages (CLI11's ranges print the double limits in full):
// a finite number >= 0 ("must be a finite number >= 0"), > 0, or in (0, 1].
CLI::Validator finite_non_negative();
CLI::Validator finite_positive();
CLI::Validator unit_interval();

}  // namespace kiln::cli

#define KILN_COMMAND(Class, name, help)                                              \
  static const bool kiln_command_registered_##Class = ::kiln::cli::register_command( \
      {name, help, [] { return std::unique_ptr<::kiln::cli::Command>(new Class()); }})
