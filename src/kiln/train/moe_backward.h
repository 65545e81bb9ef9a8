// Training pieces of mixture-of-experts blocks (layers/moe.h): a forward that keeps what the
// backward needs, and the backward, for every router kind but sparsemixer. As in PyTorch
// autograd on the HF formula, the choice of experts (top-k, groups, correction bias) is not
// differentiated: the router's gradient flows through the weights of the chosen experts only.
// f32 buffers; rows = B * T flattened; gradients are ADDED (callers zero them); a null
// gradient pointer is skipped (frozen weights).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/models/model_spec.h"

namespace kiln::train {

// A linear module's parameters and gradients; b, dw, db may be null.
struct LinearRef {
  const float* w = nullptr;  // [out, in]
  const float* b = nullptr;  // [out]
  float* dw = nullptr;
  float* db = nullptr;
};

// One MoE block's parameters (pointers into a TrainModel's storage). The experts are stacked:
// gate and up [E, I, H], down [E, H, I], their biases (expert_bias) [E, I] and [E, H].
struct MoeParams {
  LinearRef router;                        // [E, H] (+ [E] with router_bias)
  const float* correction_bias = nullptr;  // [E] or null: steers the choice only, no gradient
  LinearRef gate, up, down;                // stacked experts
  LinearRef shared_gate, shared_up, shared_down;  // shared experts, one MLP (when any)
  LinearRef shared_expert_gate;  // Qwen2-MoE's gate on the shared experts [1, H] (when any)
};

// What moe_forward keeps for moe_backward.
struct MoeSaved {
  std::vector<float> logits;       // [rows, E]
  std::vector<int64_t> experts;    // [rows, k]
  std::vector<float> weights;      // [rows, k] (routed scaling included)
  std::vector<int64_t> first;      // [E + 1]: expert e's picks are by_expert[first[e], first[e+1])
  std::vector<int64_t> by_expert;  // [rows * k] picks (indices into [rows, k]) grouped by expert
  std::vector<float> gate, up, act;  // [rows * k, I] per pick, in by_expert order
  std::vector<float> out;            // [rows * k, H] each pick's expert output (unweighted)
  std::vector<float> shared_gate, shared_up, shared_act;  // [rows, shared_intermediate]
  // With a shared-expert gate: the shared experts' output before the gate [rows, H], and the
  // gate sigmoid(x . w) [rows].
  std::vector<float> shared_out, shared_sigmoid;
};

// Throws Error "training: <where>: <feature> is not supported yet" for MoE settings the
// functions below do not compute (sparsemixer router, activations without a backward). Experts with
// spec.swiglu_limit > 0 use gpt-oss's clamped SwiGLU.
void check_moe_trainable(const MoeSpec& spec, Activation activation, const std::string& where);

// y = sum over the token's picks of weight * expert(x) (expert(weight * x) when
// spec.weight_expert_input) + shared(x), the shared part times sigmoid(x . w) with
// spec.shared_expert_gate (Qwen2-MoE).   x [rows, H] -> y [rows, H] (overwritten).
void moe_forward(const MoeSpec& spec, Activation activation, const MoeParams& p, const float* x,
                 int64_t rows, int64_t hidden, float* y, MoeSaved& saved);

// From dy [rows, H]: dx [rows, H] += d/dx, and every parameter gradient of p.
void moe_backward(const MoeSpec& spec, Activation activation, const MoeParams& p, const float* x,
                  const MoeSaved& saved, const float* dy, float* dx, int64_t rows, int64_t hidden);

// The router's part: from the gradient of the chosen experts' weights d_weights [rows, k]
// (weights as ops::route_tokens gives them, routed scaling included) to the logits':
// d_logits [rows, E] += ...   logits [rows, E], experts [rows, k] (the choice made).
//   kTopKSoftmax   w = s softmax(l_chosen)
//   kTopKSigmoid   w = s sigmoid(l_chosen)
//   kSoftmaxTopK   w = s p_chosen (/ sum p_chosen when norm_topk_prob), p = softmax(l) over all
//   kSigmoidGroup  w = s g_chosen (/ (sum g_chosen + 1e-20) when norm_topk_prob), g = sigmoid(l)
// (s = routed_scaling_factor). Throws Error for kSparseMixer.
void router_backward(const MoeSpec& spec, const float* logits, const int64_t* experts,
                     const float* d_weights, float* d_logits, int64_t rows);

}  // namespace kiln::train
