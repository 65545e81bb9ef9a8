// Generator: prefill a prompt, then decode token by token with the KV cache until a stop
// token or the token limit.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kiln/layers/model.h"
#include "kiln/runtime/sampler.h"

namespace kiln {

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0.0;  // the prompt's forward pass and the first token's choice
  double decode_seconds = 0.0;   // every later step
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;  // generated tokens after the first
};

class Generator {
 public:
  // `stop_ids`: tokens that end generation (the model's EOS ids; empty = never stop early).
  Generator(const Model& model, const SamplingParams& params, std::vector<int64_t> stop_ids);

  // Generates up to `max_new_tokens` tokens after `prompt` (one row). A stop token ends
  // generation and is neither returned nor passed to `on_token`; every other token is
  // passed to `on_token` (when set) as soon as it is chosen. After the prompt's pass, the
  // decode steps allocate nothing (unless the RoPE scaling makes them recompute the
  // sequence). Throws Error for an empty prompt or ids outside the vocabulary.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                                const std::function<void(int32_t)>& on_token = {});

  // Timings of the last generate() call.
  const GenerationStats& stats() const { return stats_; }

 private:
  const Model& model_;
  Sampler sampler_;
  std::vector<int64_t> stop_ids_;
  GenerationStats stats_;
};

}  // namespace kiln
