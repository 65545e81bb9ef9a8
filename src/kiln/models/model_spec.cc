#include "kiln/models/model_spec.h"

#include "kiln/io/json.h"

namespace kiln {

int64_t ModelSpec::kv_cache_bytes_per_token(int64_t bytes_per_value) const {
  int64_t values = 0;
  for (const LayerSpec& layer : layers) {
    const AttentionSpec& a = layer.attention;
    const int64_t value_dim = a.value_head_dim > 0 ? a.value_head_dim : a.head_dim;
    values += a.is_mla() ? a.kv_lora_rank + a.qk_rope_head_dim
                         : a.num_kv_heads * (a.head_dim + value_dim);
  }
  return values * bytes_per_value;
}

namespace {
const char* norm_kind_name(NormKind kind) {
  switch (kind) {
    case NormKind::kNone:
      return "none";
    case NormKind::kRms:
      return "rms";
    case NormKind::kRmsOnePlus:
      return "rms_one_plus";
    case NormKind::kLayerNorm:
      return "layer_norm";
    case NormKind::kLayerNormNoBias:
      return "layer_norm_no_bias";
    case NormKind::kNonParametric:
      return "non_parametric";
  }
  return "?";
}

const char* activation_name(Activation activation) {
  switch (activation) {
    case Activation::kSilu:
      return "silu";
    case Activation::kGeluExact:
      return "gelu";
    case Activation::kGeluTanh:
      return "gelu_tanh";
    case Activation::kRelu:
      return "relu";
    case Activation::kReluSquared:
      return "relu_squared";
  }
  return "?";
}

const char* rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::kNone:
      return "none";
    case RopeType::kDefault:
      return "default";
    case RopeType::kLinear:
      return "linear";
    case RopeType::kDynamic:
      return "dynamic";
    case RopeType::kYarn:
      return "yarn";
    case RopeType::kLlama3:
      return "llama3";
    case RopeType::kLongRope:
      return "longrope";
  }
  return "?";
}

const char* router_name(RouterKind router) {
  switch (router) {
    case RouterKind::kSoftmaxTopK:
      return "softmax_top_k";
    case RouterKind::kTopKSoftmax:
      return "top_k_softmax";
    case RouterKind::kSigmoidGroup:
      return "sigmoid_group";
    case RouterKind::kTopKSigmoid:
      return "top_k_sigmoid";
  }
  return "?";
}

const char* placement_name(NormPlacement placement) {
  switch (placement) {
    case NormPlacement::kPre:
      return "pre";
    case NormPlacement::kPost:
      return "post";
    case NormPlacement::kSandwich:
      return "sandwich";
    case NormPlacement::kParallel:
      return "parallel";
  }
  return "?";
}

const char* qk_norm_name(QkNormKind kind) {
  switch (kind) {
    case QkNormKind::kNone:
      return "none";
    case QkNormKind::kPerHead:
      return "per_head";
    case QkNormKind::kWholeProjection:
      return "whole_projection";
    case QkNormKind::kL2:
      return "l2";
  }
  return "?";
}

Json norm_json(const NormSpec& norm) {
  return {{"kind", norm_kind_name(norm.kind)}, {"eps", norm.eps}};
}

Json rope_json(const RopeSpec& r) {
  return {{"type", rope_type_name(r.type)},
          {"theta", r.theta},
          {"rotary_dim", r.rotary_dim},
          {"interleaved", r.interleaved},
          {"factor", r.factor},
          {"original_max_position", r.original_max_position},
          {"max_position", r.max_position},
          {"beta_fast", r.beta_fast},
          {"beta_slow", r.beta_slow},
          {"mscale", r.mscale},
          {"mscale_all_dim", r.mscale_all_dim},
          {"attention_factor", r.attention_factor},
          {"truncate", r.truncate},
          {"low_freq_factor", r.low_freq_factor},
          {"high_freq_factor", r.high_freq_factor},
          {"short_factor", r.short_factor},
          {"long_factor", r.long_factor}};
}

Json layer_json(const LayerSpec& layer) {
  const AttentionSpec& a = layer.attention;
  const MoeSpec& m = layer.moe;
  return {
      {"kind", layer.kind == LayerKind::kFullAttention ? "full_attention" : "sliding_attention"},
      {"attention",
       {{"num_heads", a.num_heads},
        {"num_kv_heads", a.num_kv_heads},
        {"head_dim", a.head_dim},
        {"value_head_dim", a.value_head_dim},
        {"q_bias", a.q_bias},
        {"k_bias", a.k_bias},
        {"v_bias", a.v_bias},
        {"o_bias", a.o_bias},
        {"qk_norm", qk_norm_name(a.qk_norm)},
        {"qk_norm_spec", norm_json(a.qk_norm_spec)},
        {"sliding_window", a.sliding_window},
        {"softcap", a.softcap},
        {"scale", a.scale},
        {"rope", rope_json(a.rope)},
        {"q_lora_rank", a.q_lora_rank},
        {"kv_lora_rank", a.kv_lora_rank},
        {"qk_nope_head_dim", a.qk_nope_head_dim},
        {"qk_rope_head_dim", a.qk_rope_head_dim},
        {"latent_norm", norm_json(a.latent_norm)},
        {"chunk_size", a.chunk_size},
        {"temperature_floor_scale", a.temperature_floor_scale},
        {"temperature_attn_scale", a.temperature_attn_scale}}},
      {"mlp",
       {{"intermediate", layer.mlp.intermediate},
        {"gated", layer.mlp.gated},
        {"activation", activation_name(layer.mlp.activation)},
        {"bias", layer.mlp.bias}}},
      {"moe",
       {{"num_experts", m.num_experts},
        {"top_k", m.top_k},
        {"expert_intermediate", m.expert_intermediate},
        {"router", router_name(m.router)},
        {"norm_topk_prob", m.norm_topk_prob},
        {"routed_scaling_factor", m.routed_scaling_factor},
        {"n_group", m.n_group},
        {"topk_group", m.topk_group},
        {"score_correction_bias", m.score_correction_bias},
        {"num_shared_experts", m.num_shared_experts},
        {"shared_intermediate", m.shared_intermediate},
        {"shared_expert_gate", m.shared_expert_gate},
        {"weight_expert_input", m.weight_expert_input}}},
      {"norm", norm_json(layer.norm)},
      {"placement", placement_name(layer.placement)},
      {"parallel_shared_norm", layer.parallel_shared_norm}};
}
}  // namespace

Json ModelSpec::to_json() const {
  Json layer_list = Json::array();
  for (const LayerSpec& layer : layers) layer_list.push_back(layer_json(layer));
  return {{"family", family},
          {"architecture", architecture},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"max_position_embeddings", max_position_embeddings},
          {"layers", layer_list},
          {"embedding_scale", embedding_scale},
          {"learned_positions", learned_positions},
          {"tie_word_embeddings", tie_word_embeddings},
          {"final_norm", norm_json(final_norm)},
          {"has_final_norm", has_final_norm},
          {"final_logit_softcap", final_logit_softcap},
          {"logit_scale", logit_scale},
          {"lm_head_bias", lm_head_bias},
          {"bos_token_ids", bos_token_ids},
          {"eos_token_ids", eos_token_ids}};
}

}  // namespace kiln
