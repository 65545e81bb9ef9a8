#include "kiln/runtime/generator.h"

#include <algorithm>
#include <chrono>

#include "kiln/core/error.h"

namespace kiln {

double GenerationStats::prefill_tokens_per_second() const {
  return prefill_seconds > 0.0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
}

double GenerationStats::decode_tokens_per_second() const {
  return generated_tokens > 1 && decode_seconds > 0.0
             ? static_cast<double>(generated_tokens - 1) / decode_seconds
             : 0.0;
}

Generator::Generator(const Model& model, const SamplingParams& params,
                     std::vector<int64_t> stop_ids)
    : model_(model), sampler_(params), stop_ids_(std::move(stop_ids)) {}

std::vector<int32_t> Generator::generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                         const std::function<void(int32_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  check(!prompt.empty(), "generate: the prompt has no tokens");
  stats_ = {};
  stats_.prompt_tokens = static_cast<int64_t>(prompt.size());
  std::vector<int32_t> generated;
  if (max_new_tokens <= 0) return generated;
  const int64_t vocab = model_.spec().vocab_size;
  KvCache cache = model_.make_cache(1, stats_.prompt_tokens + max_new_tokens);
  Workspace workspace;  // sized by the prompt's pass, then reused by every decode step
  generated.reserve(static_cast<size_t>(max_new_tokens));
  ForwardOptions options;
  options.last_position_only = true;

  auto start = Clock::now();
  const float* logits =
      model_.forward(prompt.data(), 1, stats_.prompt_tokens, cache, workspace, options);
  int32_t next = sampler_.sample(logits, vocab);
  stats_.prefill_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  start = Clock::now();
  while (true) {
    if (std::find(stop_ids_.begin(), stop_ids_.end(), next) != stop_ids_.end()) break;
    generated.push_back(next);
    if (on_token) on_token(next);
    if (static_cast<int64_t>(generated.size()) == max_new_tokens) break;
    logits = model_.forward(&next, 1, 1, cache, workspace, options);  // [1, 1, V]
    next = sampler_.sample(logits, vocab);
  }
  stats_.decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  stats_.generated_tokens = static_cast<int64_t>(generated.size());
  return generated;
}

}  // namespace kiln
