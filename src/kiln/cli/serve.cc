// `kiln serve [MODEL] [--host H] [--port P] [--parallel N] [--ctx N] [--queue N] [--kv-budget MiB]
// [--kv-block N] [--kv-dtype f32|bf16] [--prefix-cache MiB] [--prefill-chunk 0|N|auto]
// [--admission-window MS] [--bf16-gemv rounded|split|widen] [--api-key K] [--chat-template FILE]
// [--name NAME]`: an OpenAI-compatible HTTP server (serve/server.h).
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "kiln/chat/chat_template.h"
#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/models/loader.h"
#include "kiln/ops/kernels.h"
#include "kiln/serve/server.h"

namespace kiln::cli {
namespace {

serve::Server* g_server = nullptr;

void on_signal(int) {
  if (g_server) g_server->stop();
}

class ServeCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    add_model_options(app, model_path_, family_);
    app.add_option("--host", options_.host, "address to listen on (default 127.0.0.1)");
    app.add_option("--port", options_.port, "port (default 8080; 0 = any free port)")
        ->check(CLI::Range(0, 65535));
    app.add_option("--parallel", engine_.parallel, "sequences decoded at a time (default 4)")
        ->check(CLI::Range(1, 256));
    app.add_option("--ctx", engine_.context,
                   "tokens per sequence, prompt and completion (default: the model's limit)")
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
    app.add_option("--queue", engine_.max_queue,
                   "sequences that may wait beyond --parallel; more get 503 (default 64)")
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
    app.add_option("--kv-budget", kv_budget_mib_,
                   "MiB of KV cache the running sequences may hold together (default: room for "
                   "max(parallel, 16) full-context sequences)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
    app.add_option("--kv-block", engine_.kv_block,
                   "positions per KV cache block, the unit in which caches grow (default 64)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    app.add_option("--kv-dtype", kv_dtype_,
                   "KV cache values: f32 (default) or bf16 (half the memory, values rounded)")
        ->check(CLI::IsMember({"f32", "bf16"}));
    app.add_option("--prefix-cache", prefix_cache_mib_,
                   "MiB of KV kept for prompt prefixes that later prompts reuse (default 0: off)")
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
    app.add_option("--admission-window", admission_window_ms_,
                   "milliseconds an idle server waits for more requests before it takes a "
                   "burst's prompts in together (one prompt pass, not the first alone); 0: at "
                   "once (default 5)")
        ->check(CLI::Range(0.0, 1000.0));
    app.add_option("--prefill-chunk", prefill_chunk_,
                   "how prompts go in. 0 (default): one-shot, the prompts admitted since the "
                   "last step prefilled together through the GEMM between decode steps (fastest "
                   "prompts; the other streams pause meanwhile). N: chunked, up to N prompt tokens "
                   "per step share "
                   "the step with the decoding sequences (steadier inter-token latency under "
                   "load; long prompts several times slower). auto: chunked, filling the step's "
                   "last pass of 16 rows, or one more pass when under 4 rows are left")
        ->check([](const std::string& value) -> std::string {
          if (value == "auto") return "";
          try {
            size_t used = 0;
            const long long n = std::stoll(value, &used);
            if (used == value.size() && n >= 0 && n <= (1LL << 20)) return "";
          } catch (const std::exception&) {
          }
          return "must be auto or a number of tokens from 0 to 1048576, not " + value;
        });
    app.add_option("--bf16-gemv", bf16_gemv_,
                   "how decode steps multiply bf16 weights on AVX-512 (ops::Bf16Gemv): rounded "
                   "(activations rounded to bf16, as the prompt passes' GEMM and PyTorch do: "
                   "half the multiplies of split), split (activations as two bf16 parts, near "
                   "f32, as kiln generate), widen (f32 FMAs); default: KILN_BF16_GEMV, else "
                   "rounded")
        ->check(CLI::IsMember({"split", "rounded", "widen"}));
    app.add_option("--api-key", options_.api_key, "require Authorization: Bearer KEY");
    app.add_option("--chat-template", chat_template_,
                   "a .jinja file or tokenizer_config.json whose chat template to use (default: "
                   "the model's)");
    app.add_option("--name", options_.model_name,
                   "model id in /v1/models (default: the folder name)");
    app.add_flag("--mmap", mmap_, "map the weight files instead of reading them into memory");
  }

  int run() override {
    if (model_path_.empty()) model_path_ = default_model_path();
    // A server's steps run many rows, where the GEMV is compute-bound: rounded unless asked.
    const char* env = std::getenv("KILN_BF16_GEMV");
    if (!bf16_gemv_.empty())
      ops::use_bf16_gemv(ops::bf16_gemv_named(bf16_gemv_));
    else if (!env || !*env)
      ops::use_bf16_gemv(ops::Bf16Gemv::kRounded);
    engine_.kv_budget = kv_budget_mib_ << 20;
    engine_.admission_window_us = static_cast<int64_t>(admission_window_ms_ * 1000.0);
    engine_.kv_dtype = kv_dtype_ == "bf16" ? DType::BF16 : DType::F32;
    engine_.prefix_cache = prefix_cache_mib_ << 20;
    engine_.prefill_chunk = prefill_chunk_ == "auto" ? serve::EngineOptions::kPrefillChunkAuto
                                                     : std::stoll(prefill_chunk_);
    if (options_.model_name.empty())
      options_.model_name =
          std::filesystem::path(model_path_).lexically_normal().filename().string();
    if (options_.model_name.empty())
      options_.model_name = std::filesystem::path(model_path_).parent_path().filename().string();
    // The chat template: explicit, else the model's own, else none (chat answers 400).
    const std::optional<chat::ChatTemplate> chat_template =
        find_chat_template(model_path_, chat_template_, "/v1/chat/completions answers 400");
    const LoadedModel loaded =
        load_model(model_path_, mmap_ ? Residency::kMapped : Residency::kResident, family_);
    const Model model(loaded.spec, loaded.weights);
    const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(model_path_);
    serve::Engine engine(model, *tokenizer, loaded.spec.eos_token_ids, engine_);
    serve::ChatRenderer render;
    if (chat_template) {
      render = [&chat_template](const std::string& messages) {
        chat::ChatOptions options;
        options.add_generation_prompt = true;
        return chat_template->apply(nlohmann::ordered_json::parse(messages), options);
      };
    }
    serve::Server server(engine, *tokenizer, render, options_);
    server.bind();
    std::printf(
        "kiln serve: %s on http://%s:%d (context %lld, %lld parallel, KV budget %lld MiB %s, "
        "%lld bytes per token, bf16 GEMV %s)\n",
        options_.model_name.c_str(), options_.host.c_str(), server.port(),
        static_cast<long long>(engine.context()), static_cast<long long>(engine_.parallel),
        static_cast<long long>(engine.kv_budget() >> 20), kv_dtype_.c_str(),
        static_cast<long long>(engine.kv_bytes_per_token()), ops::bf16_gemv_name(ops::bf16_gemv()));
    std::fflush(stdout);
    g_server = &server;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    server.listen();
    g_server = nullptr;
    return 0;
  }

 private:
  FamilyChoice family_;
  std::string model_path_;
  std::string chat_template_;
  bool mmap_ = false;
  int64_t kv_budget_mib_ = 0;
  int64_t prefix_cache_mib_ = 0;
  std::string prefill_chunk_ = "0";
  std::string kv_dtype_ = "f32";
  std::string bf16_gemv_;
  double admission_window_ms_ = 5.0;
  serve::ServerOptions options_;
  serve::EngineOptions engine_;
};

}  // namespace

KILN_COMMAND(ServeCommand, "serve", "OpenAI-compatible HTTP server (chat and completions)");

}  // namespace kiln::cli
