// `kiln chat [MODEL] [--chat-template FILE] [--system TEXT] [--max-tokens N] [--temperature T]
// [--top-p P] [--seed S]`: a terminal chat. Each turn renders the whole conversation with the
// chat template, streams the reply as it is generated, and prints a status line (tokens,
// tokens/s) on stderr. A line ending in a backslash continues on the next line; /reset
// clears the conversation, /system TEXT sets the system message (and resets), /quit or end of
// input leaves.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/models/loader.h"
#include "kiln/serve/engine.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::cli {
namespace {

class ChatCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    add_model_options(app, model_path_, family_);
    app.add_option("--chat-template", chat_template_,
                   "a .jinja file or tokenizer_config.json whose chat template to use (default: "
                   "the model's)");
    app.add_option("--system", system_, "the system message");
    app.add_option("--max-tokens", max_tokens_, "most tokens per reply (default 512)")
        ->check(finite_non_negative());
    app.add_option("--temperature", temperature_, "0 = greedy (default 0.7)")
        ->check(finite_non_negative());
    app.add_option("--top-p", top_p_, "sample within this probability mass (default 0.95)")
        ->check(unit_interval());
    app.add_option("--seed", seed_, "random seed (default 0)");
  }

  int run() override {
    if (model_path_.empty()) model_path_ = default_model_path();
    const std::optional<chat::ChatTemplate> chat_template =
        find_chat_template(model_path_, chat_template_, "");
    check(chat_template.has_value(),
          model_path_ + ": the model has no chat template; pass --chat-template FILE");
    const LoadedModel loaded = load_model(model_path_, Residency::kResident, family_);
    const Model model(loaded.spec, loaded.weights);
    const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path_);
    // The reply ends at the model's EOS, or at the template's end-of-turn token.
    std::vector<int64_t> stop_ids = loaded.spec.eos_token_ids;
    std::vector<std::string> stop_strings;
    const auto& special = chat_template->special_tokens();
    if (special.contains("eos_token") && special["eos_token"].is_string()) {
      const std::string eos = special["eos_token"].get<std::string>();
      if (const std::optional<int32_t> id = tokenizer->token_to_id(eos)) stop_ids.push_back(*id);
      stop_strings.push_back(eos);
    }
    serve::Engine engine(model, *tokenizer, stop_ids, {1, 0, 1});
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    auto reset = [&] {
      messages = nlohmann::ordered_json::array();
      if (!system_.empty()) messages.push_back({{"role", "system"}, {"content", system_}});
    };
    reset();
    std::fprintf(stderr,
                 "kiln chat: %s (/reset, /system TEXT, /quit; end a line with \\ to continue)\n",
                 model_path_.c_str());
    std::string line;
    while (true) {
      std::fputs("> ", stderr);
      std::string input;
      bool more = true, got = false;
      while (more && std::getline(std::cin, line)) {
        got = true;
        more = !line.empty() && line.back() == '\\';
        if (more) line.pop_back();
        input += line;
        if (more) input += "\n";
      }
      if (!got) break;
      tok::check_utf8(input, "input");
      if (input == "/quit") break;
      if (input == "/reset") {
        reset();
        std::fputs("(conversation cleared)\n", stderr);
        continue;
      }
      if (input.rfind("/system", 0) == 0) {
        system_ = input.size() > 8 ? input.substr(8) : "";
        reset();
        std::fputs("(system message set; conversation cleared)\n", stderr);
        continue;
      }
      if (input.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", input}});
      chat::ChatOptions options;
      options.add_generation_prompt = true;
      serve::SequenceRequest request;
      request.prompt = tokenizer->encode(chat_template->apply(messages, options), false);
      request.max_tokens = max_tokens_;
      request.stop = stop_strings;
      request.sampling.temperature = temperature_;
      request.sampling.top_p = top_p_;
      request.sampling.seed = seed_++;
      const auto start = std::chrono::steady_clock::now();
      const std::shared_ptr<serve::Channel> channel = engine.submit(std::move(request));
      std::string reply;
      serve::Event event;
      do {
        std::optional<serve::Event> next = channel->pop(1000);
        if (!next) continue;
        event = std::move(*next);
        check(event.error.empty(), event.error);
        reply += event.text;
        std::fputs(event.text.c_str(), stdout);
        std::fflush(stdout);
      } while (!event.done);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fputs("\n", stdout);
      std::fprintf(stderr, "[%lld tokens, %.1f tokens/s, %s]\n",
                   static_cast<long long>(event.completion_tokens),
                   seconds > 0 ? static_cast<double>(event.completion_tokens) / seconds : 0.0,
                   event.finish_reason.c_str());
      messages.push_back({{"role", "assistant"}, {"content", reply}});
    }
    return 0;
  }

 private:
  FamilyChoice family_;
  std::string model_path_;
  std::string chat_template_;
  std::string system_;
  int64_t max_tokens_ = 512;
  float temperature_ = 0.7f;
  float top_p_ = 0.95f;
  uint64_t seed_ = 0;
};

}  // namespace

KILN_COMMAND(ChatCommand, "chat", "interactive terminal chat with the model's chat template");

}  // namespace kiln::cli
