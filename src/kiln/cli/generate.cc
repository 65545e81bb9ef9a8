// `kiln generate [MODEL] --prompt TEXT`: streams a continuation of the prompt to stdout and
// reports prefill and decode speed and the KV-cache bytes per token on stderr.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/hf_config.h"
#include "kiln/io/json.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/runtime/generator.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/tokenizer/utf8.h"
#include "kiln/train/lora.h"

namespace kiln::cli {

class GenerateCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    add_model_options(app, model_path_, family_);
    app.add_option("--prompt", prompt_, "text to continue")->required();
    app.add_option("--max-tokens", max_tokens_, "most tokens to generate (default 128)")
        ->check(finite_non_negative());
    app.add_option("--temperature", temperature_,
                   "0 = greedy (default: generation_config.json's sampling, else greedy)")
        ->check(finite_non_negative());
    app.add_option("--top-k", top_k_, "sample among the k most likely tokens (0 = all)")
        ->check(finite_non_negative());
    app.add_option("--top-p", top_p_, "sample within this probability mass (0 < p <= 1)")
        ->check(unit_interval());
    app.add_option("--seed", seed_, "random seed for sampling (default 0)");
    app.add_option("--lora", lora_,
                   "LoRA adapter folder (kiln train --lora-rank, or PEFT): merged into the "
                   "weights at load")
        ->check(CLI::ExistingDirectory);
    app.add_flag("--mmap", mmap_,
                 "map the weight files instead of reading them into memory (opens faster; "
                 "decode may be slower, see docs/performance.md)");
  }

  int run() override {
    tok::check_utf8(prompt_, "--prompt");
    if (model_path_.empty()) model_path_ = default_model_path();
    LoadedModel loaded =
        load_model(model_path_, mmap_ ? Residency::kMapped : Residency::kResident, family_);
    if (!lora_.empty()) train::merge_lora(loaded.weights, train::load_lora(lora_, loaded));
    const Model model(loaded.spec, loaded.weights);
    const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path_);
    const SamplingParams params = sampling_params();
    const std::vector<int32_t> prompt_ids = tokenizer->encode(prompt_, true);
    check(!prompt_ids.empty(), "--prompt: the prompt encodes to no tokens");
    const int64_t room =
        loaded.spec.max_position_embeddings - static_cast<int64_t>(prompt_ids.size());
    check(room > 0, "--prompt: " + std::to_string(prompt_ids.size()) +
                        " prompt tokens leave no room within max_position_embeddings " +
                        std::to_string(loaded.spec.max_position_embeddings));

    // The prompt is echoed through the same streaming decoder, so stdout is the decoded
    // text of prompt + continuation.
    StreamDecoder stream(*tokenizer);
    for (int32_t id : prompt_ids) std::fputs(stream.push(id).c_str(), stdout);
    std::fflush(stdout);
    Generator generator(model, params, loaded.spec.eos_token_ids);
    generator.generate(prompt_ids, std::min<int64_t>(max_tokens_, room), [&](int32_t id) {
      std::fputs(stream.push(id).c_str(), stdout);
      std::fflush(stdout);
    });
    std::fputs(stream.finish().c_str(), stdout);
    std::fflush(stdout);

    const GenerationStats& s = generator.stats();
    if (isatty(STDOUT_FILENO)) std::fputc('\n', stderr);
    std::fprintf(stderr,
                 "prefill: %lld tokens in %.3f s (%.1f tokens/s); decode: %lld tokens in %.3f s "
                 "(%.1f tokens/s)\n",
                 static_cast<long long>(s.prompt_tokens), s.prefill_seconds,
                 s.prefill_tokens_per_second(), static_cast<long long>(s.generated_tokens),
                 s.decode_seconds, s.decode_tokens_per_second());
    std::fprintf(stderr, "KV cache: %lld bytes per token (f32, all layers)\n",
                 static_cast<long long>(model.make_cache(1, 1).bytes_per_token()));
    return 0;
  }

 private:
  // Explicit options win; otherwise generation_config.json's sampling settings when it
  // samples (HF's defaults: temperature 1, top-k 50), else greedy.
  SamplingParams sampling_params() const {
    SamplingParams params;
    const std::filesystem::path path =
        std::filesystem::path(model_path_) / "generation_config.json";
    if (std::filesystem::exists(path)) {
      const HfConfig generation = HfConfig::from_json(read_json_file(path.string()), path.string());
      if (generation.get_bool("do_sample", false)) {
        params.temperature = static_cast<float>(generation.get_double("temperature", 1.0));
        params.top_k = generation.get_int("top_k", 50);
        params.top_p = static_cast<float>(generation.get_double("top_p", 1.0));
      }
    }
    if (temperature_) params.temperature = *temperature_;
    if (top_k_) params.top_k = *top_k_;
    if (top_p_) params.top_p = *top_p_;
    params.seed = seed_;
    return params;
  }

  FamilyChoice family_;
  std::string model_path_, lora_;
  std::string prompt_;
  int64_t max_tokens_ = 128;
  std::optional<float> temperature_;
  std::optional<int64_t> top_k_;
  std::optional<float> top_p_;
  uint64_t seed_ = 0;
  bool mmap_ = false;
};

KILN_COMMAND(GenerateCommand, "generate",
             "Continue a prompt with a model, streaming the text (tokens/s on stderr)");

}  // namespace kiln::cli
