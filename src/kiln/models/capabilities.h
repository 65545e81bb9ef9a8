// Which architectural features this build can compute. Layers, ops and families declare
// what they implement beside the code that implements it (KILN_CAPABILITY), so that
// `kiln analyze` derives "supported" from the build instead of from a list that drifts.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kiln {

// A capability is a (feature, value) pair. The features and their values, as `kiln analyze`
// names them (enum values spelled as ModelSpec's *_name() functions spell them) (a value in <angle
// brackets> is free text; "yes" marks an on/off feature):
//   embedding.scale         yes                     embeddings multiplied by a constant
//   embedding.positions     rope, learned, alibi
//   attention.kind          mha, gqa, mqa, mla
//   attention.bias          yes                     biases on the q/k/v (and o) projections
//   attention.qk_norm       per_head, whole_projection, l2
//   attention.sliding_window yes
//   attention.chunked       yes                     attention within fixed-size chunks
//   attention.softcap       yes
//   attention.scale         yes                     softmax scale other than 1/sqrt(head_dim)
//   attention.sinks         yes                     a learned per-head logit in the softmax
//   attention.clip_qkv      yes                     q, k, v clamped after projection
//   attention.temperature_tuning yes
//   attention.bidirectional yes                     no causal mask
//   attention.layer_type    <layer_types value>     a kind of layer other than full/sliding
//   rope.type               default, linear, dynamic, yarn, llama3, longrope, <other>
//   rope.fraction           full, partial           rotary on all or part of each head
//   rope.pairing            half_split, interleaved
//   rope.local              yes                     other RoPE settings on sliding layers
//   rope.skipped_layers     yes                     layers without RoPE (NoPE)
//   rope.mrope              yes                     multimodal RoPE sections
//   rope.scaling.<name>     yes                     a scaling parameter RopeSpec lacks
//   norm.kind               rms, rms_one_plus, layer_norm, layer_norm_no_bias, non_parametric
//   norm.placement          pre, post, sandwich, parallel, parallel_shared_norm
//   residual.scale          yes                     branch outputs scaled before the residual add
//   mlp.kind                gated, plain
//   mlp.activation          silu, gelu, gelu_tanh, relu, relu_squared, clamped_swiglu, <other>
//   mlp.bias                yes
//   moe                     yes
//   moe.router              softmax_top_k, top_k_softmax, sigmoid_group, top_k_sigmoid,
//                           sparsemixer, <other>
//   moe.router_bias         yes
//   moe.expert_bias         yes
//   moe.groups              yes                     group-limited expert selection
//   moe.routed_scaling      yes
//   moe.shared_experts      yes
//   moe.shared_expert_gate  yes
//   moe.dense_layers        yes                     some layers dense, others MoE
//   logits.softcap          yes
//   logits.scale            yes
//   logits.bias             yes
//   quantization            fp8, mxfp4, <other quant_method>
//   multimodal              yes                     a vision/audio tower beside the text model

// Declares that this build computes `value` of `feature`; returns true (for static
// registration). Declaring the same pair twice is harmless.
bool declare_capability(const std::string& feature, const std::string& value);
// True when some part of the build declared (feature, value).
bool has_capability(const std::string& feature, const std::string& value);
// Every declared pair, sorted.
std::vector<std::pair<std::string, std::string>> capabilities();

}  // namespace kiln

#define KILN_CAPABILITY_CONCAT_INNER(a, b) a##b
#define KILN_CAPABILITY_CONCAT(a, b) KILN_CAPABILITY_CONCAT_INNER(a, b)
// At namespace scope in the .cc file that implements the feature:
//   KILN_CAPABILITY("rope.type", "yarn");
#define KILN_CAPABILITY(feature, value)                                                   \
  [[maybe_unused]] static const bool KILN_CAPABILITY_CONCAT(kiln_capability_, __LINE__) = \
      ::kiln::declare_capability(feature, value)
