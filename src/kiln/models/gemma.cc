// Gemma: like Llama, except (1 + w) RMSNorms, GeGLU (tanh GELU), sqrt(hidden)-scaled and
// tied embeddings.
#include "kiln/models/gemma.h"

#include <cmath>

#include "kiln/core/error.h"
#include "kiln/models/config_to_spec.h"

namespace kiln {

void GemmaFamily::apply_differences(const HfConfig& config, ModelSpec& spec) const {
  for (LayerSpec& layer : spec.layers) {
    layer.norm.kind = NormKind::kRmsOnePlus;
    layer.attention.qk_norm_spec.kind = NormKind::kRmsOnePlus;
    layer.mlp.activation = config.has("hidden_activation")
                               ? activation_from_config(config, "hidden_activation")
                               : Activation::kGeluTanh;
  }
  spec.final_norm.kind = NormKind::kRmsOnePlus;
  // HF multiplies by sqrt(hidden) held in the activations' dtype: float32 here.
  spec.embedding_scale = static_cast<float>(std::sqrt(static_cast<double>(spec.hidden_size)));
  spec.tie_word_embeddings = config.get_bool("tie_word_embeddings", true);
  config.mark_read({"hidden_act"});
}

std::vector<std::string> GemmaFamily::layer_types(const HfConfig& config, int64_t layers,
                                                  int64_t pattern) {
  std::vector<std::string> types;
  const Json& given = config.get("layer_types");
  if (!given.is_null()) {
    check(given.is_array() && static_cast<int64_t>(given.size()) == layers,
          config.source() + ": key 'layer_types' must list one type per layer");
    for (const Json& t : given) {
      const std::string type = t.is_string() ? t.get<std::string>() : t.dump();
      check(type == "sliding_attention" || type == "full_attention",
            config.source() + ": key 'layer_types' has unknown type '" + type + "'");
      types.push_back(type);
    }
    return types;
  }
  for (int64_t i = 0; i < layers; ++i)
    types.push_back((i + 1) % pattern != 0 ? "sliding_attention" : "full_attention");
  return types;
}

void Gemma2Family::apply_differences(const HfConfig& config, ModelSpec& spec) const {
  GemmaFamily::apply_differences(config, spec);
  const std::vector<std::string> types =
      layer_types(config, spec.num_layers(), default_sliding_pattern(config));
  const int64_t window = config.get_int("sliding_window", 4096);
  const float attention_softcap =
      static_cast<float>(config.get_double("attn_logit_softcapping", 0.0));
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    LayerSpec& layer = spec.layers[i];
    layer.placement = NormPlacement::kSandwich;
    AttentionSpec& a = layer.attention;
    a.scale = static_cast<float>(std::pow(
        config.get_double("query_pre_attn_scalar", static_cast<double>(a.head_dim)), -0.5));
    a.softcap = attention_softcap;
    const bool sliding = types[i] == "sliding_attention";
    layer.kind = sliding ? LayerKind::kSlidingAttention : LayerKind::kFullAttention;
    a.sliding_window = sliding ? window : 0;
  }
  spec.final_logit_softcap = static_cast<float>(config.get_double("final_logit_softcapping", 0.0));
  config.mark_read({"sliding_window_size", "cache_implementation", "use_bidirectional_attention"});
}

HfModuleNames GemmaFamily::hf_modules(const ModelSpec&) const {
  HfModuleNames names;
  names.embedding = "";
  names.not_compared = {{"model.embed_tokens",
                         "HF scales by sqrt(hidden) after this module: Kiln's scaled embedding is "
                         "compared as hidden_states.0"}};
  return names;
}

HfModuleNames Gemma2Family::hf_modules(const ModelSpec& spec) const {
  HfModuleNames names = GemmaFamily::hf_modules(spec);
  names.attention_output = "post_attention_layernorm";
  names.mlp_output = "post_feedforward_layernorm";
  names.lm_head = "";
  names.not_compared.push_back(
      {"lm_head", "HF soft-caps the logits after this module: Kiln's are compared as logits"});
  return names;
}

KILN_FAMILY(GemmaFamily);
KILN_FAMILY(Gemma2Family);

}  // namespace kiln
