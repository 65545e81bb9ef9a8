// `kiln eval [MODEL] --data PATH [--seq T] [--chat-template PATH] [--lora DIR] [--json]`: the
// model's mean next-token loss and perplexity on a dataset (train/data.h; chat JSONL,
// train/sft.h), with the inference forward pass (every family), optionally with LoRA adapters
// merged in.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/train/backward.h"
#include "kiln/train/data.h"
#include "kiln/train/lora.h"
#include "kiln/train/sft.h"

namespace kiln::cli {
namespace {

class EvalCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    add_model_options(app, model_path_, family_);
    app.add_option("--data", data_,
                   "a text file, a folder of files, or JSONL ({\"text\"} or {\"prompt\", "
                   "\"completion\"}: loss on the completion)")
        ->required();
    app.add_option("--seq", seq_, "tokens per window (default 256)")->check(CLI::Range(2, 1 << 20));
    app.add_option("--chat-template", chat_template_,
                   "chat data ({\"messages\"} JSONL, loss on assistant turns): the template "
                   "(default: the model's own)")
        ->check(CLI::ExistingPath);
    app.add_option("--lora", lora_, "LoRA adapter folder, merged into the weights at load")
        ->check(CLI::ExistingDirectory);
    app.add_flag("--json", json_, "print the result as JSON");
  }

  int run() override {
    if (model_path_.empty()) model_path_ = default_model_path();
    LoadedModel loaded = load_model(model_path_, Residency::kResident, family_);
    if (!lora_.empty()) train::merge_lora(loaded.weights, train::load_lora(lora_, loaded));
    check(seq_ <= loaded.spec.max_position_embeddings,
          "--seq " + std::to_string(seq_) + " exceeds the model's context of " +
              std::to_string(loaded.spec.max_position_embeddings));
    const Model model(loaded.spec, loaded.weights);
    const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path_);
    const int32_t eos =
        loaded.spec.eos_token_ids.empty() ? -1 : static_cast<int32_t>(loaded.spec.eos_token_ids[0]);
    std::vector<train::Window> windows;
    if (train::is_chat_jsonl(data_)) {
      const std::optional<chat::ChatTemplate> found =
          find_chat_template(model_path_, chat_template_, "");
      check(found.has_value(), data_ + ": chat data needs a chat template; " + model_path_ +
                                   " has none (give --chat-template)");
      windows = train::read_chat_windows(data_, *found, *tokenizer, seq_);
    } else {
      windows = train::read_windows(data_, *tokenizer, seq_, eos);
    }
    const auto start = std::chrono::steady_clock::now();
    const int64_t vocab = loaded.spec.vocab_size;
    double total = 0.0;
    int64_t targets = 0, tokens = 0;
    Workspace workspace;
    for (const train::Window& w : windows) {
      const auto T = static_cast<int64_t>(w.tokens.size());
      KvCache cache = model.make_cache(1, T);
      const float* logits = model.forward(w.tokens.data(), 1, T, cache, workspace);
      const std::vector<int32_t> next =
          train::next_token_targets(w.tokens.data(), w.loss.data(), 1, T);
      total += train::cross_entropy_rows(logits, next.data(), nullptr, T, vocab, 1.0);
      targets += train::count_targets(next.data(), T);
      tokens += T;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double loss = total / static_cast<double>(targets);
    if (json_) {
      std::printf("%s\n", Json{{"loss", loss},
                               {"perplexity", std::exp(loss)},
                               {"targets", targets},
                               {"tokens", tokens},
                               {"windows", windows.size()},
                               {"seconds", seconds}}
                              .dump()
                              .c_str());
    } else {
      std::printf(
          "loss %.4f, perplexity %.3f over %lld predicted tokens (%zu windows of <= %lld; "
          "%.0f tokens/s)\n",
          loss, std::exp(loss), static_cast<long long>(targets), windows.size(),
          static_cast<long long>(seq_), seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0);
    }
    return 0;
  }

 private:
  FamilyChoice family_;
  std::string model_path_;
  std::string data_, chat_template_, lora_;
  int64_t seq_ = 256;
  bool json_ = false;
};

}  // namespace

KILN_COMMAND(EvalCommand, "eval", "mean next-token loss and perplexity on a dataset");

}  // namespace kiln::cli
