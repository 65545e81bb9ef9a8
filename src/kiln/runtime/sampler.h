// Choosing the next token from logits: greedy, or sampling with temperature, top-k and
// top-p from a seeded generator.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace kiln {

struct SamplingParams {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int64_t top_k = 0;         // > 0: keep only the k most likely tokens
  float top_p = 1.0f;        // < 1: keep the smallest set whose probability reaches top_p
  uint64_t seed = 0;         // seeds std::mt19937_64; equal seeds give equal samples
};

// Applies, as HF's logits processors do, temperature, then top-k, then top-p, and draws
// from the renormalized distribution. Not thread-safe (owns its generator and buffers,
// which grow on first use only).
class Sampler {
 public:
  // Throws Error for a negative top_k or a top_p outside (0, 1].
  explicit Sampler(const SamplingParams& params);
  // The next token.   logits: [vocab] f32
  int32_t sample(const float* logits, int64_t vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int64_t> candidates_;  // [k], most likely first
  std::vector<double> probs_;        // [k]
};

}  // namespace kiln
