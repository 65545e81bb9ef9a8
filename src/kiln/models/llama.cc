// Llama: pre-norm RMSNorm blocks, GQA attention with default (or scaled) RoPE, SwiGLU MLP,
// optional attention/MLP biases and tied embeddings.
#include "kiln/models/llama.h"

#include "kiln/core/error.h"
#include "kiln/models/config_to_spec.h"
#include "kiln/models/rope_config.h"
#include "kiln/models/weight_names.h"

namespace kiln {

ModelSpec LlamaFamily::build_spec(const HfConfig& config) const {
  ModelSpec spec;
  spec.architecture = config.architecture();
  spec.vocab_size = config.get_int("vocab_size");
  spec.hidden_size = config.get_int("hidden_size");
  spec.max_position_embeddings = config.get_int("max_position_embeddings", 2048);
  spec.tie_word_embeddings = config.get_bool("tie_word_embeddings", false);
  spec.bos_token_ids = config.get_int_list("bos_token_id");
  spec.eos_token_ids = config.get_int_list("eos_token_id");
  const int64_t layers = config.get_int("num_hidden_layers");
  const int64_t heads = config.get_int("num_attention_heads");
  check(layers > 0 && heads > 0 && spec.hidden_size > 0 && spec.vocab_size > 0,
        config.source() +
            ": vocab_size, hidden_size, num_hidden_layers and num_attention_heads must be "
            "positive");
  const float eps = static_cast<float>(config.get_double("rms_norm_eps", 1e-6));
  const bool attention_bias = config.get_bool("attention_bias", false);

  LayerSpec layer;
  layer.norm = {NormKind::kRms, eps};
  AttentionSpec& attention = layer.attention;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_int("num_key_value_heads", heads);
  attention.head_dim = config.get_int("head_dim", spec.hidden_size / heads);
  attention.value_head_dim = attention.head_dim;
  attention.q_bias = attention.k_bias = attention.v_bias = attention.o_bias = attention_bias;
  attention.qk_norm_spec = {NormKind::kRms, eps};
  attention.rope = rope_spec_from_config(config, "", attention.head_dim);
  layer.mlp.intermediate = config.get_int("intermediate_size");
  layer.mlp.gated = true;
  layer.mlp.activation = activation_from_config(config, "hidden_act");
  layer.mlp.bias = config.get_bool("mlp_bias", false);
  spec.layers.assign(layers, layer);
  spec.final_norm = {NormKind::kRms, eps};
  config.mark_read({"attention_dropout", "initializer_range", "use_cache", "pretraining_tp",
                    "pad_token_id", "dtype", "torch_dtype", "transformers_version"});
  apply_differences(config, spec);
  return spec;
}

void LlamaFamily::apply_differences(const HfConfig&, ModelSpec&) const {}

void LlamaFamily::apply_qwen_sliding_window(const HfConfig& config, ModelSpec& spec) {
  const bool use_sliding_window = config.get_bool("use_sliding_window", false);
  const int64_t window = use_sliding_window ? config.get_int("sliding_window", 0) : 0;
  const Json& layer_types = config.get("layer_types");
  const int64_t max_window_layers = config.get_int("max_window_layers", 0);
  if (!layer_types.is_null())
    check(layer_types.is_array() && static_cast<int64_t>(layer_types.size()) == spec.num_layers(),
          config.source() + ": key 'layer_types' must list one type per layer");
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    bool sliding;
    if (layer_types.is_null()) {
      sliding = window > 0 && i >= max_window_layers;
    } else {
      const Json& type = layer_types[i];
      check(type == "full_attention" || type == "sliding_attention",
            config.source() + ": key 'layer_types' has unknown type " + type.dump());
      sliding = type == "sliding_attention" && window > 0;
    }
    spec.layers[i].kind = sliding ? LayerKind::kSlidingAttention : LayerKind::kFullAttention;
    spec.layers[i].attention.sliding_window = sliding ? window : 0;
  }
}

std::vector<WeightMapping> LlamaFamily::map_weights(const ModelSpec& spec,
                                                    const TensorSource& source) const {
  std::vector<WeightMapping> mappings;
  auto rename = [&](std::string kiln_name, const std::string& llama_name, Shape shape) {
    mappings.push_back({std::move(kiln_name), {hf_name(llama_name)}, std::move(shape), {}});
  };
  const int64_t hidden = spec.hidden_size;
  auto norm = [&](const std::string& module, const std::string& llama_module, NormKind kind) {
    rename(names::scale(module), llama_module + ".weight", {hidden});
    if (kind == NormKind::kLayerNorm) rename(names::bias(module), llama_module + ".bias", {hidden});
  };
  rename(names::embedding(names::token_embedder()), "model.embed_tokens.weight",
         {spec.vocab_size, hidden});
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    const LayerSpec& layer = spec.layers[i];
    const std::string hf = "model.layers." + std::to_string(i) + ".";
    const NormKind kind = layer.norm.kind;
    if (layer.placement != NormPlacement::kPost)
      norm(names::input_norm(i), hf + "input_layernorm", kind);
    map_attention_weights(spec, i, source, mappings);
    if (!(layer.placement == NormPlacement::kParallel && layer.parallel_shared_norm))
      norm(names::post_attention_norm(i), hf + "post_attention_layernorm", kind);
    if (layer.placement == NormPlacement::kSandwich)
      norm(names::pre_ffw_norm(i), hf + "pre_feedforward_layernorm", kind);
    if (layer.placement == NormPlacement::kSandwich || layer.placement == NormPlacement::kPost)
      norm(names::post_ffw_norm(i), hf + "post_feedforward_layernorm", kind);
    map_mlp_weights(spec, i, source, mappings);
  }
  if (spec.has_final_norm) norm(names::final_norm(), "model.norm", spec.final_norm.kind);
  if (!spec.tie_word_embeddings)
    rename(names::kernel(names::lm_head()), "lm_head.weight", {spec.vocab_size, hidden});
  if (spec.lm_head_bias) rename(names::bias(names::lm_head()), "lm_head.bias", {spec.vocab_size});
  return mappings;
}

void LlamaFamily::map_attention_weights(const ModelSpec& spec, int64_t i, const TensorSource&,
                                        std::vector<WeightMapping>& mappings) const {
  auto rename = [&](std::string kiln_name, const std::string& llama_name, Shape shape) {
    mappings.push_back({std::move(kiln_name), {hf_name(llama_name)}, std::move(shape), {}});
  };
  const AttentionSpec& a = spec.layers[i].attention;
  const int64_t hidden = spec.hidden_size;
  const std::string hf = "model.layers." + std::to_string(i) + ".self_attn.";
  const std::string attention = names::attention(i);
  struct Projection {
    const char* kiln;
    const char* hf;
    int64_t out, in;
    bool bias;
  };
  const Projection projections[] = {
      {"query", "q_proj", a.num_heads * a.head_dim, hidden, a.q_bias},
      {"key", "k_proj", a.num_kv_heads * a.head_dim, hidden, a.k_bias},
      {"value", "v_proj", a.num_kv_heads * a.value_head_dim, hidden, a.v_bias},
      {"out", "o_proj", hidden, a.num_heads * a.value_head_dim, a.o_bias},
  };
  for (const Projection& p : projections) {
    const std::string module = names::child(attention, p.kiln);
    rename(names::kernel(module), hf + p.hf + ".weight", {p.out, p.in});
    if (p.bias) rename(names::bias(module), hf + p.hf + ".bias", {p.out});
  }
  if (a.qk_norm == QkNormKind::kPerHead || a.qk_norm == QkNormKind::kWholeProjection) {
    const bool whole = a.qk_norm == QkNormKind::kWholeProjection;
    rename(names::scale(names::child(attention, "query_norm")), hf + "q_norm.weight",
           {whole ? a.num_heads * a.head_dim : a.head_dim});
    rename(names::scale(names::child(attention, "key_norm")), hf + "k_norm.weight",
           {whole ? a.num_kv_heads * a.head_dim : a.head_dim});
  }
}

void LlamaFamily::map_mlp_weights(const ModelSpec& spec, int64_t i, const TensorSource&,
                                  std::vector<WeightMapping>& mappings) const {
  auto rename = [&](std::string kiln_name, const std::string& llama_name, Shape shape) {
    mappings.push_back({std::move(kiln_name), {hf_name(llama_name)}, std::move(shape), {}});
  };
  const MlpSpec& mlp = spec.layers[i].mlp;
  const int64_t hidden = spec.hidden_size, inner = mlp.intermediate;
  const std::string hf = "model.layers." + std::to_string(i) + ".mlp.";
  const std::pair<std::string, std::string> inputs[] = {{names::mlp_gate(i), "gate_proj"},
                                                        {names::mlp_up(i), "up_proj"}};
  for (const auto& [module, projection] : inputs) {
    if (module == names::mlp_gate(i) && !mlp.gated) continue;
    rename(names::kernel(module), hf + projection + ".weight", {inner, hidden});
    if (mlp.bias) rename(names::bias(module), hf + projection + ".bias", {inner});
  }
  rename(names::kernel(names::mlp_down(i)), hf + "down_proj.weight", {hidden, inner});
  if (mlp.bias) rename(names::bias(names::mlp_down(i)), hf + "down_proj.bias", {hidden});
}

KILN_FAMILY(LlamaFamily);

std::string LlamaFamily::replace_parts(
    std::string name,
    std::initializer_list<std::pair<std::string_view, std::string_view>> renames) {
  for (const auto& [from, to] : renames)
    if (const size_t at = name.find(from); at != std::string::npos)
      name.replace(at, from.size(), to);
  return name;
}

}  // namespace kiln
