// Reference expert routing (Mixtral, Qwen-MoE and DeepSeek-V3 routers), in float32 like
// transformers.
#include "kiln/ops/router.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/ops/softmax.h"
#include "kiln/ops/top_k.h"

namespace kiln::ops {

KILN_CAPABILITY("moe.router", "topk_softmax");
KILN_CAPABILITY("moe.router", "softmax_topk");
KILN_CAPABILITY("moe.router", "sigmoid_group");
KILN_CAPABILITY("moe.groups", "yes");
KILN_CAPABILITY("moe.routed_scaling", "yes");

namespace {

void check_settings(const MoeSpec& spec) {
  const int64_t experts = spec.num_experts;
  check(spec.top_k >= 1 && spec.top_k <= experts, "router: top_k " + std::to_string(spec.top_k) +
                                                      " must be in [1, " + std::to_string(experts) +
                                                      "]");
  if (spec.router != RouterKind::kSigmoidGroup) return;
  check(spec.n_group >= 1 && experts % spec.n_group == 0,
        "router: n_group " + std::to_string(spec.n_group) + " does not divide " +
            std::to_string(experts) + " experts");
  check(spec.topk_group >= 1 && spec.topk_group <= spec.n_group,
        "router: topk_group " + std::to_string(spec.topk_group) + " must be in [1, n_group " +
            std::to_string(spec.n_group) + "]");
}

// DeepSeek-V3's choice for one token: the k best biased scores inside the best groups.
std::vector<int64_t> choose_in_groups(const MoeSpec& spec, const float* scores,
                                      const float* correction_bias) {
  const int64_t experts = spec.num_experts, group_size = experts / spec.n_group;
  std::vector<float> biased(experts);  // [E]
  for (int64_t e = 0; e < experts; ++e)
    biased[e] = scores[e] + (correction_bias ? correction_bias[e] : 0.0f);
  std::vector<float> group_scores(spec.n_group);  // [n_group]
  for (int64_t g = 0; g < spec.n_group; ++g) {
    const float* members = biased.data() + g * group_size;
    float sum = 0.0f;
    for (int64_t e : top_k(members, group_size, 2)) sum += members[e];
    group_scores[g] = sum;
  }
  std::vector<float> masked(experts, 0.0f);  // [E]: biased scores of kept groups, else 0
  for (int64_t g : top_k(group_scores.data(), spec.n_group, spec.topk_group))
    std::copy_n(biased.begin() + g * group_size, group_size, masked.begin() + g * group_size);
  return top_k(masked.data(), experts, spec.top_k);
}

}  // namespace

void route_tokens(const MoeSpec& spec, const float* logits, const float* correction_bias,
                  int64_t rows, int64_t* experts, float* weights) {
  check_settings(spec);
  const int64_t E = spec.num_experts, k = spec.top_k;
  const float scaling = static_cast<float>(spec.routed_scaling_factor);
  std::vector<float> scores(E);  // [E]
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * E;  // [E]
    int64_t* chosen = experts + r * k;  // [k]
    float* weight = weights + r * k;    // [k]
    std::vector<int64_t> picks;
    switch (spec.router) {
      case RouterKind::kTopKSoftmax: {
        picks = top_k(row, E, k);
        for (int64_t j = 0; j < k; ++j) weight[j] = row[picks[j]];
        softmax(weight, weight, 1, k);
        break;
      }
      case RouterKind::kSoftmaxTopK: {
        softmax(row, scores.data(), 1, E);
        picks = top_k(scores.data(), E, k);
        float sum = 0.0f;
        for (int64_t j = 0; j < k; ++j) {
          weight[j] = scores[picks[j]];
          sum += weight[j];
        }
        if (spec.norm_topk_prob)
          for (int64_t j = 0; j < k; ++j) weight[j] /= sum;
        break;
      }
      case RouterKind::kSigmoidGroup: {
        for (int64_t e = 0; e < E; ++e) scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
        picks = choose_in_groups(spec, scores.data(), correction_bias);
        float sum = 0.0f;
        for (int64_t j = 0; j < k; ++j) {
          weight[j] = scores[picks[j]];
          sum += weight[j];
        }
        if (spec.norm_topk_prob)
          for (int64_t j = 0; j < k; ++j) weight[j] /= sum + 1e-20f;
        break;
      }
    }
    for (int64_t j = 0; j < k; ++j) {
      chosen[j] = picks[j];
      weight[j] *= scaling;
    }
  }
}

}  // namespace kiln::ops
