// `kiln template PATH --messages FILE [--add-generation-prompt] [--json]`: renders a model's
// chat template for a conversation exactly as transformers' apply_chat_template does, and
// with --json also the token ids (tokenized without adding special tokens again, as
// apply_chat_template(tokenize=True) does).
#include <filesystem>
#include <iostream>

#include "kiln/chat/chat_template.h"
#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;

class TemplateCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("path", path_,
                   "Model folder (chat_template.jinja or tokenizer_config.json), a "
                   "tokenizer_config.json, or a .jinja file")
        ->required();
    app.add_option("--messages", messages_,
                   "JSON array of {\"role\", \"content\"} messages ('-': stdin)")
        ->required();
    app.add_flag("--add-generation-prompt", add_generation_prompt_,
                 "End with the header of an assistant turn");
    app.add_option("--name", name_,
                   "Which template of a tokenizer_config.json with several (default: "
                   "\"default\")");
    app.add_flag("--json", json_,
                 "Print {\"text\", \"ids\"}: the ids from the model's tokenizer, no special "
                 "tokens added");
  }

  int run() override {
    const chat::ChatTemplate chat_template = chat::ChatTemplate::load(path_, name_);
    const nlohmann::ordered_json messages = chat::read_messages(messages_);
    chat::ChatOptions options;
    options.add_generation_prompt = add_generation_prompt_;
    const std::string text = chat_template.apply(messages, options);
    if (!json_) {
      std::cout << text << std::flush;
      return 0;
    }
    const fs::path folder =
        fs::is_directory(path_) ? fs::path(path_) : fs::path(path_).parent_path();
    const auto tokenizer = Tokenizer::load(folder.empty() ? "." : folder.string());
    const std::vector<int32_t> ids = tokenizer->encode(text, false);
    nlohmann::ordered_json out = {{"text", text}, {"ids", ids}};
    std::cout << out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
    return 0;
  }

 private:
  std::string path_;
  std::string messages_;
  std::string name_;
  bool add_generation_prompt_ = false;
  bool json_ = false;
};

}  // namespace

KILN_COMMAND(TemplateCommand, "template",
             "Render a model's chat template for a conversation (as transformers does)");

}  // namespace kiln::cli
