// Falcon: like Llama, except for LayerNorm with biases, an ungated GELU MLP, tied
// embeddings, attention and MLP side by side (one shared norm, or ln_attn / ln_mlp in the
// new decoder architecture), multi-query or grouped KV heads, and Q, K and V fused in one
// `query_key_value` grouped per KV head. Also reads the legacy RefinedWeb configs.
#include "kiln/core/error.h"
#include "kiln/models/config_to_spec.h"
#include "kiln/models/family.h"
#include "kiln/models/rope_config.h"
#include "kiln/models/weight_mappings.h"
#include "kiln/models/weight_names.h"

namespace kiln {

class FalconFamily : public Family {
 public:
  std::string name() const override { return "falcon"; }
  std::vector<std::string> architectures() const override {
    return {"FalconForCausalLM", "RWForCausalLM"};
  }
  std::vector<std::string> model_types() const override {
    return {"falcon", "RefinedWeb", "RefinedWebModel"};
  }

  ModelSpec build_spec(const HfConfig& config) const override {
    // RefinedWeb configs name some keys the old way.
    auto get_int = [&](const std::string& key, const std::string& legacy) {
      return config.has(key) ? config.get_int(key) : config.get_int(legacy);
    };
    ModelSpec spec;
    spec.architecture = config.architecture();
    spec.vocab_size = config.get_int("vocab_size");
    spec.hidden_size = config.get_int("hidden_size");
    spec.max_position_embeddings = config.get_int("max_position_embeddings", 2048);
    spec.tie_word_embeddings = config.get_bool("tie_word_embeddings", true);
    spec.bos_token_ids = config.get_int_list("bos_token_id");
    spec.eos_token_ids = config.get_int_list("eos_token_id");
    const int64_t layers = get_int("num_hidden_layers", "n_layer");
    const int64_t heads = get_int("num_attention_heads", "n_head");
    check(layers > 0 && heads > 0 && spec.hidden_size % heads == 0,
          config.source() + ": the layer and head counts must be positive and divide hidden_size");
    check(!config.get_bool("alibi", false),
          config.source() + ": key 'alibi': ALiBi position biases are not supported");
    check(!config.get_bool("apply_residual_connection_post_layernorm", false),
          config.source() +
              ": key 'apply_residual_connection_post_layernorm': residuals taken after the norm "
              "are not supported");
    const bool new_architecture = config.get_bool("new_decoder_architecture", false);
    const bool multi_query = config.get_bool("multi_query", true);
    const bool parallel = config.get_bool("parallel_attn", true);
    check(parallel || !new_architecture,
          config.source() + ": the new decoder architecture needs parallel_attn");
    const int64_t norms_in_parallel =
        config.get_int("num_ln_in_parallel_attn", new_architecture ? 2 : 1);
    const bool bias = config.get_bool("bias", false);

    LayerSpec layer;
    layer.norm = {NormKind::kLayerNorm,
                  static_cast<float>(config.get_double("layer_norm_epsilon", 1e-5))};
    layer.placement = parallel ? NormPlacement::kParallel : NormPlacement::kPre;
    layer.parallel_shared_norm = parallel && !(new_architecture && norms_in_parallel == 2);
    AttentionSpec& a = layer.attention;
    a.num_heads = heads;
    a.num_kv_heads = new_architecture ? get_int("num_kv_heads", "n_head_kv")
                     : multi_query    ? 1
                                      : heads;
    check(a.num_kv_heads > 0 && heads % a.num_kv_heads == 0,
          config.source() + ": num_kv_heads must divide num_attention_heads");
    a.head_dim = a.value_head_dim = spec.hidden_size / heads;
    a.q_bias = a.k_bias = a.v_bias = a.o_bias = bias;
    a.rope = rope_spec_from_config(config, "", a.head_dim);
    layer.mlp.intermediate = config.get_int("ffn_hidden_size", 4 * spec.hidden_size);
    layer.mlp.gated = false;
    layer.mlp.activation = config.has("activation") ? activation_from_config(config, "activation")
                                                    : Activation::kGeluExact;
    layer.mlp.bias = bias;
    spec.layers.assign(layers, layer);
    spec.final_norm = layer.norm;
    config.get("num_kv_heads");  // only the new decoder architecture groups KV heads
    return spec;
  }

  std::vector<WeightMapping> map_weights(const ModelSpec& spec,
                                         const TensorSource&) const override {
    const int64_t hidden = spec.hidden_size;
    const HfModuleNames hf_names = hf_modules(spec);
    WeightMappingList list;
    list.rename(names::embedding(names::token_embedder()), "transformer.word_embeddings.weight",
                {spec.vocab_size, hidden});
    for (int64_t i = 0; i < spec.num_layers(); ++i) {
      const LayerSpec& layer = spec.layers[i];
      const AttentionSpec& a = layer.attention;
      const std::string hf = "transformer.h." + std::to_string(i) + ".";
      const std::string attention = names::attention(i);
      list.norm(names::input_norm(i), hf + hf_names.input_norm, layer.norm, hidden);
      if (!layer.parallel_shared_norm)
        list.norm(names::post_attention_norm(i), hf + hf_names.post_attention_norm, layer.norm,
                  hidden);
      // query_key_value is laid out [kv_heads, heads / kv_heads + 2, head_dim] (rows).
      const int64_t queries_per_kv = a.num_heads / a.num_kv_heads;
      const std::pair<const char*, QkvPart> parts[] = {
          {"query", QkvPart::kQuery}, {"key", QkvPart::kKey}, {"value", QkvPart::kValue}};
      for (const auto& [kiln_name, part] : parts) {
        const std::string module = names::child(attention, kiln_name);
        const int64_t rows = (part == QkvPart::kQuery ? a.num_heads : a.num_kv_heads) * a.head_dim;
        auto split = [=, part = part](const Tensor& t) {
          return grouped_qkv_part(t, a.num_kv_heads, queries_per_kv, a.head_dim, part);
        };
        const std::string fused = hf + "self_attention.query_key_value";
        list.derive(names::kernel(module), fused + ".weight", {rows, hidden}, split);
        if (a.q_bias) list.derive(names::bias(module), fused + ".bias", {rows}, split);
      }
      list.linear(names::child(attention, "out"), hf + "self_attention.dense", hidden,
                  a.num_heads * a.head_dim, a.o_bias);
      const int64_t inner = layer.mlp.intermediate;
      list.linear(names::mlp_up(i), hf + "mlp.dense_h_to_4h", inner, hidden, layer.mlp.bias);
      list.linear(names::mlp_down(i), hf + "mlp.dense_4h_to_h", hidden, inner, layer.mlp.bias);
    }
    list.norm(names::final_norm(), "transformer.ln_f", spec.final_norm, hidden);
    if (!spec.tie_word_embeddings)
      list.rename(names::kernel(names::lm_head()), "lm_head.weight", {spec.vocab_size, hidden});
    return list.take();
  }

  HfModuleNames hf_modules(const ModelSpec& spec) const override {
    const LayerSpec& layer = spec.layers.at(0);
    HfModuleNames names;
    names.embedding = "transformer.word_embeddings";
    names.layers = "transformer.h";
    names.attention = "self_attention";
    names.attention_parts = {{"out", "dense"}};
    names.mlp_parts = {{"wo", "dense_4h_to_h"}};
    names.final_norm = "transformer.ln_f";
    names.not_compared = {
        {"self_attention.query_key_value",
         "fused QKV projection: Kiln splits it into query, key and value at load"}};
    if (layer.placement != NormPlacement::kParallel) return names;
    names.input_norm = "ln_attn";
    names.post_attention_norm = "ln_mlp";
    if (layer.parallel_shared_norm) {
      names.input_norm = "input_layernorm";
      names.post_attention_norm = "";
    }
    names.mlp_out_includes_attention = true;  // `mlp_output += attention_output`
    return names;
  }
};

KILN_FAMILY(FalconFamily);

}  // namespace kiln
