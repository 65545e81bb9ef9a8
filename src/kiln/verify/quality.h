// Comparing a model with a base model of the same architecture and vocabulary (a quantized
// checkpoint against its bf16 / f32 source): per-token KL divergence of the next-token
// distributions, top-1 agreement, and the perplexity of both on the same token windows.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/layers/model.h"
#include "kiln/train/data.h"

namespace kiln {

struct QualityReport {
  int64_t positions = 0;  // next-token distributions compared
  double kl_mean = 0.0;   // KL(base || model) in nats, over positions
  double kl_p99 = 0.0;    // 99th percentile (nearest rank)
  double kl_max = 0.0;
  double top1_agreement = 0.0;   // fraction of positions where both argmaxes agree
  int64_t targets = 0;           // positions with a next token that counts for the loss
  double perplexity = 0.0;       // exp(mean next-token loss) of `model`
  double base_perplexity = 0.0;  // the same for `base`
};

// Runs every window through both models (one prefill each, batch 1) and compares the
// distributions at every position; the loss counts the positions whose next token is a
// target (Window::loss). Throws Error when the vocabularies differ or there are no windows.
QualityReport compare_models(const Model& model, const Model& base,
                             const std::vector<train::Window>& windows);

}  // namespace kiln
