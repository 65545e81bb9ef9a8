// Reference expert routing (Mixtral, Qwen-MoE, DeepSeek-V3 and Llama 4 routers), in float32 like
// transformers.
#include "kiln/ops/router.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kiln/core/error.h"
#include "kiln/models/capabilities.h"
#include "kiln/ops/cpu/scratch.h"
#include "kiln/ops/softmax.h"
#include "kiln/ops/top_k.h"

namespace kiln::ops {

KILN_CAPABILITY("moe.router", "top_k_softmax");
KILN_CAPABILITY("moe.router", "softmax_top_k");
KILN_CAPABILITY("moe.router", "sigmoid_group");
KILN_CAPABILITY("moe.router", "top_k_sigmoid");
KILN_CAPABILITY("moe.router", "sparsemixer");
KILN_CAPABILITY("moe.groups", "yes");
KILN_CAPABILITY("moe.routed_scaling", "yes");

namespace {

void check_settings(const MoeSpec& spec) {
  const int64_t experts = spec.num_experts;
  if (spec.top_k < 1 || spec.top_k > experts)
    throw Error("router: top_k " + std::to_string(spec.top_k) + " must be in [1, " +
                std::to_string(experts) + "]");
  if (spec.router == RouterKind::kSparseMixer && spec.top_k != 2)
    throw Error("router: sparsemixer picks 2 experts, not top_k " + std::to_string(spec.top_k));
  if (spec.router != RouterKind::kSigmoidGroup &&
      !(spec.router == RouterKind::kSoftmaxTopK && spec.n_group > 1))
    return;
  if (spec.n_group < 1 || experts % spec.n_group != 0)
    throw Error("router: n_group " + std::to_string(spec.n_group) + " does not divide " +
                std::to_string(experts) + " experts");
  if (spec.topk_group < 1 || spec.topk_group > spec.n_group)
    throw Error("router: topk_group " + std::to_string(spec.topk_group) +
                " must be in [1, n_group " + std::to_string(spec.n_group) + "]");
}

// Per-token scratch of route_tokens, carved from one per-thread buffer.
struct RoutingScratch {
  float* scores;        // [E]
  float* biased;        // [E]
  float* masked;        // [E]
  float* group_scores;  // [n_group]
  int64_t* best;        // [max(2, n_group)]: the best members of a group, then the best groups
};

RoutingScratch routing_scratch(const MoeSpec& spec) {
  const int64_t E = spec.num_experts, groups = std::max<int64_t>(spec.n_group, 1);
  const size_t floats = static_cast<size_t>(3 * E + groups);
  auto* base = static_cast<std::byte*>(
      cpu::thread_scratch(cpu::ScratchSlot::kRouting,
                          sizeof(float) * floats +
                              sizeof(int64_t) * static_cast<size_t>(std::max<int64_t>(2, groups))));
  auto* f = reinterpret_cast<float*>(base);
  // The int64 part starts after the floats, rounded up to 8 bytes.
  auto* best = reinterpret_cast<int64_t*>(base + (sizeof(float) * floats + 7) / 8 * 8);
  return {f, f + E, f + 2 * E, f + 3 * E, best};
}

// The k best of `values` [E] inside the topk_group groups with the best scratch.group_scores
// (the others count as 0, as transformers masks them).   chosen: [top_k] (out)
void choose_in_kept_groups(const MoeSpec& spec, const float* values, const RoutingScratch& scratch,
                           int64_t* chosen) {
  const int64_t experts = spec.num_experts, group_size = experts / spec.n_group;
  std::fill(scratch.masked, scratch.masked + experts, 0.0f);
  top_k(scratch.group_scores, spec.n_group, spec.topk_group, scratch.best);
  for (int64_t j = 0; j < spec.topk_group; ++j) {
    const int64_t g = scratch.best[j];
    std::copy_n(values + g * group_size, group_size, scratch.masked + g * group_size);
  }
  top_k(scratch.masked, experts, spec.top_k, chosen);
}

// DeepSeek-V3's choice for one token: the k best biased scores inside the best groups.
//   chosen: [top_k] (out)
void choose_in_groups(const MoeSpec& spec, const float* correction_bias,
                      const RoutingScratch& scratch, int64_t* chosen) {
  const int64_t experts = spec.num_experts, group_size = experts / spec.n_group;
  for (int64_t e = 0; e < experts; ++e)
    scratch.biased[e] = scratch.scores[e] + (correction_bias ? correction_bias[e] : 0.0f);
  const int64_t two = std::min<int64_t>(2, group_size);
  for (int64_t g = 0; g < spec.n_group; ++g) {
    const float* members = scratch.biased + g * group_size;  // [group_size]
    top_k(members, group_size, two, scratch.best);
    float sum = 0.0f;
    for (int64_t j = 0; j < two; ++j) sum += members[scratch.best[j]];
    scratch.group_scores[g] = sum;
  }
  choose_in_kept_groups(spec, scratch.biased, scratch, chosen);
}

// DeepSeek-V2's group_limited_greedy for one token: the k best scores inside the topk_group
// groups with the best maximum score.   chosen: [top_k] (out)
void choose_in_best_groups(const MoeSpec& spec, const RoutingScratch& scratch, int64_t* chosen) {
  const int64_t experts = spec.num_experts, group_size = experts / spec.n_group;
  for (int64_t g = 0; g < spec.n_group; ++g) {
    const float* members = scratch.scores + g * group_size;  // [group_size]
    scratch.group_scores[g] = *std::max_element(members, members + group_size);
  }
  choose_in_kept_groups(spec, scratch.scores, scratch, chosen);
}

// One pick of Phi-3.5-MoE's sparsemixer at inference: the best of `scores` (those at -inf
// excluded) and its softmax weight among the experts within the jitter margin of it, the
// margin measured against `reference` (the unmasked logits).
//   scores, reference: [E]
void sparsemixer_pick(const float* scores, const float* reference, int64_t experts, float eps,
                      int64_t* chosen, float* weight) {
  int64_t best = 0;
  for (int64_t e = 1; e < experts; ++e)
    if (scores[e] > scores[best]) best = e;
  const float top = scores[best];
  float sum = 0.0f;
  for (int64_t e = 0; e < experts; ++e) {
    const float factor = std::max(std::fabs(reference[e]), top);
    const bool masked = (top - reference[e]) / factor > 2.0f * eps;
    if (!masked && scores[e] != -INFINITY) sum += std::exp(scores[e] - top);
  }
  *chosen = best;
  *weight = 1.0f / sum;
}

}  // namespace

void route_tokens(const MoeSpec& spec, const float* logits, const float* correction_bias,
                  int64_t rows, int64_t* experts, float* weights) {
  check_settings(spec);
  const int64_t E = spec.num_experts, k = spec.top_k;
  const float scaling = static_cast<float>(spec.routed_scaling_factor);
  const RoutingScratch scratch = routing_scratch(spec);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * E;  // [E]
    int64_t* chosen = experts + r * k;  // [k]
    float* weight = weights + r * k;    // [k]
    switch (spec.router) {
      case RouterKind::kTopKSoftmax: {
        top_k(row, E, k, chosen);
        for (int64_t j = 0; j < k; ++j) weight[j] = row[chosen[j]];
        softmax(weight, weight, 1, k);
        break;
      }
      case RouterKind::kTopKSigmoid: {
        top_k(row, E, k, chosen);
        for (int64_t j = 0; j < k; ++j) weight[j] = 1.0f / (1.0f + std::exp(-row[chosen[j]]));
        break;
      }
      case RouterKind::kSparseMixer: {
        sparsemixer_pick(row, row, E, spec.sparsemixer_eps, chosen, weight);
        std::copy_n(row, E, scratch.masked);
        scratch.masked[chosen[0]] = -INFINITY;
        sparsemixer_pick(scratch.masked, row, E, spec.sparsemixer_eps, chosen + 1, weight + 1);
        break;
      }
      case RouterKind::kSoftmaxTopK: {
        softmax(row, scratch.scores, 1, E);
        if (spec.n_group > 1)
          choose_in_best_groups(spec, scratch, chosen);
        else
          top_k(scratch.scores, E, k, chosen);
        float sum = 0.0f;
        for (int64_t j = 0; j < k; ++j) {
          weight[j] = scratch.scores[chosen[j]];
          sum += weight[j];
        }
        if (spec.norm_topk_prob)
          for (int64_t j = 0; j < k; ++j) weight[j] /= sum;
        break;
      }
      case RouterKind::kSigmoidGroup: {
        for (int64_t e = 0; e < E; ++e) scratch.scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
        choose_in_groups(spec, correction_bias, scratch, chosen);
        float sum = 0.0f;
        for (int64_t j = 0; j < k; ++j) {
          weight[j] = scratch.scores[chosen[j]];
          sum += weight[j];
        }
        if (spec.norm_topk_prob)
          for (int64_t j = 0; j < k; ++j) weight[j] /= sum + 1e-20f;
        break;
      }
    }
    for (int64_t j = 0; j < k; ++j) weight[j] *= scaling;
  }
}

}  // namespace kiln::ops
