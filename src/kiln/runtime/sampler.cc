#include "kiln/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/top_k.h"

namespace kiln {

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  check(params.top_k >= 0, "top-k must be >= 0, got " + std::to_string(params.top_k));
  check(params.top_p > 0.0f && params.top_p <= 1.0f,
        "top-p must be in (0, 1], got " + std::to_string(params.top_p));
}

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (params_.temperature <= 0.0f) return static_cast<int32_t>(ops::argmax(logits, vocab));
  // Candidates, most likely first: all tokens, or the top k.
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  candidates_.resize(static_cast<size_t>(k));
  probs_.resize(static_cast<size_t>(k));
  ops::top_k(logits, vocab, k, candidates_.data());
  const std::vector<int64_t>& candidates = candidates_;
  std::vector<double>& probs = probs_;
  const double max_logit = logits[candidates[0]] / params_.temperature;
  double total = 0.0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    probs[i] = std::exp(logits[candidates[i]] / params_.temperature - max_logit);
    total += probs[i];
  }
  // Top-p: keep candidates while the probability before them is below top_p.
  size_t keep = candidates.size();
  if (params_.top_p < 1.0f) {
    double cumulative = 0.0;
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (cumulative >= params_.top_p * total) {
        keep = i;
        break;
      }
      cumulative += probs[i];
    }
  }
  const double kept_total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  double draw = std::uniform_real_distribution<double>(0.0, kept_total)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    draw -= probs[i];
    if (draw < 0.0) return static_cast<int32_t>(candidates[i]);
  }
  return static_cast<int32_t>(candidates[keep - 1]);
}

}  // namespace kiln
