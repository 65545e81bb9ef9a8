// Mapping a mixture-of-experts block's HF tensors to Kiln's stacked layout, from per-expert
// tensors (hub checkpoints) or from transformers-5 stacked experts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/models/family.h"

namespace kiln {

// How a checkpoint names one MoE block's modules.
struct MoeHfNames {
  std::string router;   // e.g. "model.layers.3.mlp.gate" (.weight, .e_score_correction_bias)
  std::string experts;  // e.g. "model.layers.3.mlp.experts"
  // The per-expert projections, `<experts>.<e>.<name>.weight` ("w1", "w3", "w2" in Mixtral).
  std::string gate = "gate_proj", up = "up_proj", down = "down_proj";
  std::string shared;  // the shared experts' module ("" when none), with gate/up/down_proj
  // Qwen2-MoE's gate on the shared expert (`<shared_gate>.weight` [1, hidden]), mapped when
  // spec.shared_expert_gate.
  std::string shared_gate = {};
  // gpt-oss's stacked experts, as inputs-first matrices: `<experts>.gate_up_proj`
  // [E, hidden, 2 I] whose columns alternate gate, up (gate_up[..., ::2] is the gate),
  // `<experts>.down_proj` [E, I, hidden]; with spec.expert_bias also
  // `<experts>.gate_up_proj_bias` [E, 2 I] (alternating the same way) and
  // `<experts>.down_proj_bias` [E, hidden].
  bool interleaved_gate_up = false;
  // Stacked experts stored input-major, as Llama 4 multiplies x @ W: `gate_up_proj`
  // [E, hidden, 2 I] (gate columns, then up columns) and `down_proj` [E, I, hidden].
  bool stacked_input_major = false;
};

// Appends the mappings of layer `layer`'s MoE block (Kiln names under names::mlp(layer),
// see models/weight_names.h): the router weight [E, hidden]; its
// e_score_correction_bias [E] when spec.score_correction_bias; the experts' kernels stacked
// into [E, I, hidden] (gate, up) and [E, hidden, I] (down), from whichever form `source`
// holds: per-expert `<experts>.<e>.<gate|up|down>.weight`, or transformers-5's stacked
// `<experts>.gate_up_proj` [E, 2 I, hidden] (gate rows, then up rows: transformers
// concatenates gate then up and splits its output in that order) with
// `<experts>.down_proj` [E, hidden, I]; and the shared experts as an MLP of
// spec.shared_intermediate when spec.num_shared_experts > 0. With hf.interleaved_gate_up the
// experts come from gpt-oss's layout instead (see MoeHfNames), transposed and de-interleaved;
// the router's `<router>.bias` [E] is mapped when spec.router_bias. With hf.stacked_input_major the
// stacked tensors are read in Llama 4's transposed layout (see MoeHfNames).
void map_moe_weights(const MoeSpec& spec, int64_t hidden, int64_t layer, const MoeHfNames& hf,
                     const TensorSource& source, std::vector<WeightMapping>& mappings);

// Part `part` (0: gate, 1: up) of a gpt-oss `gate_up_proj` [E, hidden, 2 I] whose last
// dimension alternates gate and up, as Kiln's [E, I, hidden]; or of its bias [E, 2 I], as
// [E, I]. Throws Error for other ranks or an odd last dimension.
Tensor interleaved_gate_up_part(const Tensor& gate_up, int64_t part);

// `parts` (equal shapes and dtypes) stacked along a new first dimension, as one contiguous
// tensor. Throws Error when the parts differ.
Tensor stack_tensors(const std::vector<Tensor>& parts);

}  // namespace kiln
