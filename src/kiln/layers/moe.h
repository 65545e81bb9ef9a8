// Moe: a mixture-of-experts feed-forward block: a router picks a few expert MLPs per token
// (ops/router.h), each expert runs only on the tokens that picked it, and optional shared
// experts run on every token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/layers/linear.h"
#include "kiln/layers/mlp.h"
#include "kiln/layers/weights.h"
#include "kiln/layers/workspace.h"
#include "kiln/models/model_spec.h"

namespace kiln {

class Moe {
 public:
  Moe() = default;
  // Reads, under `module` (models/weight_names.h): the router `gate/kernel` [E, hidden] (and
  // `gate/bias` [E] when spec.router_bias) and,
  // when spec.score_correction_bias, `gate/score_correction_bias` [E]; the stacked experts
  // `wi_0/kernel` (gate) and `wi_1/kernel` (up) [E, expert_intermediate, hidden] and
  // `wo/kernel` [E, hidden, expert_intermediate], viewed per expert without copying; and,
  // when spec.num_shared_experts > 0, the shared experts as one MLP of
  // spec.shared_intermediate under `shared_experts`. Experts are gated MLPs with
  // `activation` (clamped SwiGLU when spec.swiglu_limit > 0) and, when spec.expert_bias,
  // biases `wi_0/bias`, `wi_1/bias` [E, expert_intermediate] and `wo/bias` [E, hidden]. Throws
  // Error for a shared-expert gate (not implemented) and missing or misshapen weights.
  Moe(const MoeSpec& spec, Activation activation, int64_t hidden, const WeightMap& weights,
      const std::string& module);

  // y = sum over the token's picks of weight * expert(x) (expert(weight * x) when
  // spec.weight_expert_input), plus the shared experts' output.
  // Tokens are grouped by expert, so an expert nobody picked costs nothing. Intermediates
  // come from `workspace`.
  //   x: [rows, hidden] f32;  y: [rows, hidden] f32 (must not alias x)
  void forward(const float* x, int64_t rows, float* y, Workspace& workspace) const;

  // The router's logits.   x: [rows, hidden] f32;  logits: [rows, E] f32
  void router_logits(const float* x, int64_t rows, float* logits) const;
  // The experts and weights of each token from its logits (ops::route_tokens with this
  // layer's settings and correction bias).
  //   logits: [rows, E];  experts: [rows, top_k];  weights: [rows, top_k]
  void route(const float* logits, int64_t rows, int64_t* experts, float* weights) const;

  const MoeSpec& spec() const { return spec_; }

 private:
  MoeSpec spec_;
  int64_t hidden_ = 0;
  Linear router_;                       // [E, hidden]
  std::vector<float> correction_bias_;  // [E] or empty
  std::vector<Mlp> experts_;            // E experts, views of the stacked kernels
  Mlp shared_;                          // used when spec_.num_shared_experts > 0
  Linear shared_gate_;                  // [1, hidden], used when spec_.shared_expert_gate
};

}  // namespace kiln
