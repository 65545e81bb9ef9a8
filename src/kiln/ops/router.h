// Expert routing of a mixture-of-experts layer: from the router logits of each token to the
// experts it uses and the weight of each.
#pragma once

#include <cstdint>

#include "kiln/models/model_spec.h"

namespace kiln::ops {

// Picks spec.top_k experts for each of `rows` tokens and weighs them, by spec.router:
//   kTopKSoftmax   the k largest logits, softmax over those k (Mixtral)
//   kTopKSigmoid   the k largest logits, sigmoid of each (Llama 4)
//   kSoftmaxTopK   softmax over every expert, the k largest probabilities, renormalized to
//                  sum to 1 when spec.norm_topk_prob (Qwen-MoE); with spec.n_group > 1 only
//                  the experts of the spec.topk_group groups with the best maximum probability
//                  can be chosen (DeepSeek-V2's group_limited_greedy)
//   kSparseMixer   two picks (Phi-3.5-MoE at inference): the best logit m, weighted by its
//                  softmax among the experts e with (m - l_e) / max(|l_e|, m) <= 2 eps
//                  (eps = spec.sparsemixer_eps); then the same without the first pick (the
//                  margin still measured on every logit)
//   kSigmoidGroup  scores s = sigmoid(logit); experts are *chosen* by s + correction_bias:
//                  the experts form spec.n_group equal groups, a group is ranked by the sum
//                  of its two best biased scores, the spec.topk_group best groups are kept
//                  and the k best experts inside them chosen (experts of other groups count
//                  as a biased score of 0, as transformers masks them); the weights are the
//                  unbiased s of the chosen, divided by their sum (+ 1e-20) when
//                  spec.norm_topk_prob (DeepSeek-V3)
// Every weight is then multiplied by spec.routed_scaling_factor. Experts come largest
// (biased) score first; ties keep the lower index first.
//   logits:          [rows, num_experts] f32
//   correction_bias: [num_experts] f32, or nullptr (= 0); read by kSigmoidGroup only
//   experts:         [rows, top_k] expert indices (out)
//   weights:         [rows, top_k] f32 (out)
// Throws Error when top_k is not in [1, num_experts], when n_group does not divide the
// experts, or when topk_group is not in [1, n_group].
void route_tokens(const MoeSpec& spec, const float* logits, const float* correction_bias,
                  int64_t rows, int64_t* experts, float* weights);

}  // namespace kiln::ops
