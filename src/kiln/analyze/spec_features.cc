#include "kiln/analyze/spec_features.h"

#include <cmath>

#include "kiln/analyze/feature.h"

namespace kiln::analyze {
namespace {

// Windows as the layers apply them: a window at least as long as the context is no window.
int64_t effective_window(const LayerSpec& layer, int64_t max_position) {
  int64_t w = layer.kind == LayerKind::kSlidingAttention ? layer.attention.sliding_window : 0;
  if (w > 0 && max_position > 0 && w >= max_position) return 0;
  return w;
}

std::string bias_value(const AttentionSpec& a) {
  std::string out;
  for (auto [on, name] : {std::pair{a.q_bias, "q"}, std::pair{a.k_bias, "k"},
                          std::pair{a.v_bias, "v"}, std::pair{a.o_bias, "o"}})
    if (on) {
      if (!out.empty()) out += ',';
      out += name;
    }
  return out.empty() ? "none" : out;
}

std::string qk_norm_value(QkNormKind kind) {
  switch (kind) {
    case QkNormKind::kNone:
      return "none";
    case QkNormKind::kPerHead:
      return "per_head";
    case QkNormKind::kWholeProjection:
      return "whole_projection";
    case QkNormKind::kL2:
      return "l2 (no weights, on RoPE layers)";
  }
  return "none";
}

void add_rope(const RopeSpec& rope, const AttentionSpec& attention,
              std::map<std::string, std::string>* out) {
  auto& v = *out;
  v["rope.type"] = rope_type_value(rope.type);
  if (rope.type == RopeType::kNone) return;
  v["rope.theta"] = format_number(rope.theta);
  v["rope.scaling.factor"] = format_number(rope.factor);
  v["rope.scaling.original_max_position_embeddings"] = format_number(rope.original_max_position);
  v["rope.scaling.beta_fast"] = format_number(rope.beta_fast);
  v["rope.scaling.beta_slow"] = format_number(rope.beta_slow);
  v["rope.scaling.mscale"] = format_number(rope.mscale);
  v["rope.scaling.mscale_all_dim"] = format_number(rope.mscale_all_dim);
  v["rope.scaling.attention_factor"] = format_number(rope.attention_factor);
  v["rope.scaling.truncate"] = rope.truncate ? "true" : "false";
  v["rope.scaling.low_freq_factor"] = format_number(rope.low_freq_factor);
  v["rope.scaling.high_freq_factor"] = format_number(rope.high_freq_factor);
  v["rope.scaling.short_factor"] = list_value(rope.short_factor.size());
  v["rope.scaling.long_factor"] = list_value(rope.long_factor.size());
  v["rope.scaling.short_mscale"] = format_number(rope.short_mscale);
  v["rope.scaling.long_mscale"] = format_number(rope.long_mscale);
  if (!attention.is_mla())
    v["rope.fraction"] = rotary_fraction_value(rope.rotary_dim, attention.head_dim);
  v["rope.pairing"] = rope.interleaved ? "interleaved" : "half_split";
}

// Llama 4's attention features: chunked layers, NoPE layers (rope.skipped_layers, only when
// some layers do use RoPE), the L2 QK norm (on any layer) and temperature tuning.
void add_llama4_attention(const ModelSpec& spec, std::map<std::string, std::string>* out) {
  auto& v = *out;
  const int64_t layers = spec.num_layers();
  int64_t chunked = 0, chunk = 0, nope = 0;
  std::string letters;
  const AttentionSpec* tuned = nullptr;
  for (const LayerSpec& layer : spec.layers) {
    const AttentionSpec& a = layer.attention;
    if (a.chunk_size > 0) {
      ++chunked;
      chunk = a.chunk_size;
    }
    const bool skipped = a.rope.type == RopeType::kNone;
    nope += skipped ? 1 : 0;
    letters += skipped ? 'N' : 'R';
    if (a.qk_norm == QkNormKind::kL2) v["attention.qk_norm"] = qk_norm_value(a.qk_norm);
    if (a.temperature_floor_scale > 0.0 && !tuned) tuned = &a;
  }
  v["attention.chunked"] = chunked == 0 ? "none"
                                        : "chunks of " + std::to_string(chunk) + " on " +
                                              std::to_string(chunked) + " of " +
                                              std::to_string(layers) + " layers";
  if (nope > 0 && nope < layers && !spec.learned_positions)
    v["rope.skipped_layers"] = std::to_string(nope) + " of " + std::to_string(layers) +
                               " layers, " + layer_pattern(letters);
  v["attention.temperature_tuning"] =
      tuned ? "on NoPE layers (floor_scale " + format_number(tuned->temperature_floor_scale) +
                  ", attn_scale " + format_number(tuned->temperature_attn_scale) + ")"
            : "none";
}

}  // namespace

std::map<std::string, std::string> spec_feature_values(const ModelSpec& spec) {
  std::map<std::string, std::string> v;
  int64_t max_position = spec.max_position_embeddings;
  v["context"] = max_position ? std::to_string(max_position) + " positions" : "unspecified";
  v["vocabulary"] = std::to_string(spec.vocab_size);
  v["embedding.tied"] = spec.tie_word_embeddings ? "true" : "false";
  double sqrt_hidden = std::sqrt(static_cast<double>(spec.hidden_size));
  if (spec.embedding_scale == 1.0f) {
    v["embedding.scale"] = "none";
  } else if (std::fabs(spec.embedding_scale - sqrt_hidden) < 1e-2 * sqrt_hidden) {
    v["embedding.scale"] = "sqrt(hidden_size)";
  } else {
    v["embedding.scale"] = format_number(spec.embedding_scale);
  }
  v["logits.softcap"] =
      spec.final_logit_softcap == 0 ? "none" : format_number(spec.final_logit_softcap);
  v["logits.scale"] = spec.logit_scale == 1.0f ? "none" : format_number(spec.logit_scale);
  v["logits.bias"] = spec.lm_head_bias ? "yes" : "none";
  if (spec.layers.empty()) return v;

  const LayerSpec& first = spec.layers.front();
  const AttentionSpec& a = first.attention;
  v["attention.kind"] = attention_kind_value(a.num_heads, a.num_kv_heads, a.is_mla());
  if (a.is_mla()) {
    v["attention.heads"] = std::to_string(a.num_heads) + " heads";
    v["attention.mla"] =
        "q_lora_rank " + (a.q_lora_rank ? std::to_string(a.q_lora_rank) : std::string("none")) +
        ", kv_lora_rank " + std::to_string(a.kv_lora_rank) + ", qk_nope_head_dim " +
        std::to_string(a.qk_nope_head_dim) + ", qk_rope_head_dim " +
        std::to_string(a.qk_rope_head_dim) + ", v_head_dim " + std::to_string(a.value_head_dim);
  } else {
    v["attention.heads"] = heads_value(a.num_heads, a.num_kv_heads, a.head_dim);
  }
  v["attention.bias"] = bias_value(a);
  v["attention.qk_norm"] = qk_norm_value(a.qk_norm);
  v["attention.softcap"] = a.softcap == 0 ? "none" : format_number(a.softcap);
  v["attention.scale"] = attention_scale_value(a.scale, a.head_dim);
  v["attention.sinks"] = a.sinks ? "learned per-head sink logits" : "none";
  v["attention.clip_qkv"] = a.clip_qkv == 0 ? "none" : format_number(a.clip_qkv);
  v["residual.scale"] = first.residual_scale == 1.0f ? "none" : format_number(first.residual_scale);

  std::vector<int64_t> windows;
  std::vector<bool> is_moe;
  const LayerSpec* rope_layer = nullptr;
  const LayerSpec* sliding_layer = nullptr;
  const LayerSpec* dense_layer = nullptr;
  const LayerSpec* moe_layer = nullptr;
  for (const LayerSpec& layer : spec.layers) {
    windows.push_back(effective_window(layer, max_position));
    is_moe.push_back(layer.moe.enabled());
    if (layer.kind == LayerKind::kFullAttention && !rope_layer) rope_layer = &layer;
    if (layer.kind == LayerKind::kSlidingAttention && !sliding_layer) sliding_layer = &layer;
    if (layer.moe.enabled() && !moe_layer) moe_layer = &layer;
    if (!layer.moe.enabled() && !dense_layer) dense_layer = &layer;
  }
  v["attention.sliding_window"] = windows_value(windows);
  add_llama4_attention(spec, &v);

  if (!rope_layer) rope_layer = &first;
  const RopeSpec& rope = rope_layer->attention.rope;
  v["embedding.positions"] = spec.learned_positions
                                 ? "learned (" + std::to_string(max_position) + " positions)"
                             : rope.type == RopeType::kNone ? "none"
                                                            : "rope";
  add_rope(rope, rope_layer->attention, &v);
  if (sliding_layer) {
    const RopeSpec& local = sliding_layer->attention.rope;
    bool differs = local.theta != rope.theta || local.type != rope.type;
    v["rope.local"] =
        differs ? "theta " + format_number(local.theta) + ", " + rope_type_value(local.type)
                : "none";
  }

  v["norm.kind"] = norm_value(first.norm.kind, first.norm.eps);
  v["norm.placement"] = placement_value(first.placement, first.parallel_shared_norm);
  const MlpSpec& mlp = (dense_layer ? *dense_layer : first).mlp;
  v["mlp.kind"] = mlp.gated ? "gated" : "plain";
  v["mlp.activation"] = mlp.swiglu_limit > 0
                            ? "clamped_swiglu (alpha " + format_number(mlp.swiglu_alpha) +
                                  ", limit " + format_number(mlp.swiglu_limit) + ")"
                            : activation_value(mlp.activation);
  v["mlp.bias"] = mlp.bias ? "yes" : "none";
  if (dense_layer) v["mlp.intermediate"] = std::to_string(dense_layer->mlp.intermediate);

  if (!moe_layer) {
    v["moe"] = "none";
    return v;
  }
  const MoeSpec& moe = moe_layer->moe;
  v["moe"] = std::to_string(moe.num_experts) + " experts, top-" + std::to_string(moe.top_k) +
             ", expert intermediate " + std::to_string(moe.expert_intermediate);
  v["moe.router"] = router_value(moe.router);
  v["moe.norm_topk_prob"] = moe.norm_topk_prob ? "true" : "false";
  v["moe.groups"] = moe.n_group > 1 ? std::to_string(moe.n_group) + " groups, top " +
                                          std::to_string(moe.topk_group) + " groups"
                                    : "none";
  v["moe.routed_scaling"] =
      moe.routed_scaling_factor != 1.0 ? format_number(moe.routed_scaling_factor) : "none";
  v["moe.shared_experts"] =
      moe.num_shared_experts > 0
          ? shared_experts_value(moe.num_shared_experts, moe.shared_intermediate)
          : "none";
  v["moe.shared_expert_gate"] = moe.shared_expert_gate ? "sigmoid" : "none";
  v["moe.dense_layers"] = dense_layers_value(is_moe);
  v["moe.router_bias"] = moe.router_bias ? "yes" : "none";
  v["moe.expert_bias"] = moe.expert_bias ? "yes" : "none";
  return v;
}

}  // namespace kiln::analyze
