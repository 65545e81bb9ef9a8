// config.json -> ModelSpec for the Llama-like families (llama, mistral, qwen2, qwen3).
#include "kiln/models/llama.h"

#include <gtest/gtest.h>

#include "kiln/core/error.h"
#include "kiln/io/json.h"

namespace kiln {
namespace {

Json base_config(const std::string& architecture, const std::string& model_type) {
  return {{"architectures", {architecture}},
          {"model_type", model_type},
          {"vocab_size", 100},
          {"hidden_size", 64},
          {"intermediate_size", 96},
          {"num_hidden_layers", 4},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"eos_token_id", Json::array({2, 7})}};
}

ModelSpec spec_of(const Json& json) {
  return spec_from_config(HfConfig::from_json(json, "cfg"));
}

TEST(LlamaFamily, ReadsLlamaConfigWithLegacyRope) {
  const ModelSpec spec = spec_of(base_config("LlamaForCausalLM", "llama"));
  EXPECT_EQ(spec.family, "llama");
  ASSERT_EQ(spec.num_layers(), 4);
  const AttentionSpec& a = spec.layers[0].attention;
  EXPECT_EQ(a.num_heads, 8);
  EXPECT_EQ(a.num_kv_heads, 2);
  EXPECT_EQ(a.head_dim, 8);  // hidden / heads when head_dim is absent
  EXPECT_FALSE(a.q_bias);
  EXPECT_EQ(a.sliding_window, 0);
  EXPECT_EQ(a.rope.type, RopeType::kDefault);
  EXPECT_EQ(a.rope.theta, 500000.0);
  EXPECT_EQ(a.rope.rotary_dim, 8);
  EXPECT_FLOAT_EQ(spec.layers[0].norm.eps, 1e-5f);
  EXPECT_EQ(spec.layers[0].mlp.activation, Activation::kSilu);
  EXPECT_TRUE(spec.layers[0].mlp.gated);
  EXPECT_FALSE(spec.tie_word_embeddings);
  EXPECT_EQ(spec.eos_token_ids, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(spec.kv_cache_bytes_per_token(), 4 * 2 * 2 * 8 * 4);
  EXPECT_EQ(spec.to_json().at("layers").size(), 4u);
}

TEST(LlamaFamily, HeadDimBiasesAndTransformers5Rope) {
  Json json = base_config("LlamaForCausalLM", "llama");
  json["head_dim"] = 24;
  json["attention_bias"] = true;
  json["mlp_bias"] = true;
  json.erase("rope_theta");
  json["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000.0}};
  const ModelSpec spec = spec_of(json);
  const AttentionSpec& a = spec.layers[3].attention;
  EXPECT_EQ(a.head_dim, 24);
  EXPECT_TRUE(a.q_bias && a.k_bias && a.v_bias && a.o_bias);
  EXPECT_TRUE(spec.layers[3].mlp.bias);
  EXPECT_EQ(a.rope.theta, 1000.0);
}

TEST(LlamaFamily, MissingKeyAndBadActivationNameTheKey) {
  Json json = base_config("LlamaForCausalLM", "llama");
  json.erase("hidden_size");
  try {
    spec_of(json);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cfg: missing required key 'hidden_size'");
  }
  json = base_config("LlamaForCausalLM", "llama");
  json["hidden_act"] = "swirly";
  EXPECT_THROW(spec_of(json), Error);
}

TEST(MistralFamily, SlidingWindowOnEveryLayerWhenSet) {
  Json json = base_config("MistralForCausalLM", "mistral");
  json["sliding_window"] = 16;
  ModelSpec spec = spec_of(json);
  EXPECT_EQ(spec.family, "mistral");
  for (const LayerSpec& layer : spec.layers) {
    EXPECT_EQ(layer.attention.sliding_window, 16);
    EXPECT_EQ(layer.kind, LayerKind::kSlidingAttention);
  }
  json["sliding_window"] = nullptr;
  spec = spec_of(json);
  EXPECT_EQ(spec.layers[0].attention.sliding_window, 0);
}

TEST(Qwen2Family, QkvBiasesAndWindowFromMaxWindowLayers) {
  Json json = base_config("Qwen2ForCausalLM", "qwen2");
  json["sliding_window"] = 32;
  json["max_window_layers"] = 2;
  ModelSpec spec = spec_of(json);  // use_sliding_window absent: no window at all
  EXPECT_EQ(spec.family, "qwen2");
  const AttentionSpec& a = spec.layers[0].attention;
  EXPECT_TRUE(a.q_bias && a.k_bias && a.v_bias);
  EXPECT_FALSE(a.o_bias);
  for (const LayerSpec& layer : spec.layers) EXPECT_EQ(layer.attention.sliding_window, 0);
  json["use_sliding_window"] = true;
  spec = spec_of(json);
  EXPECT_EQ(spec.layers[1].attention.sliding_window, 0);
  EXPECT_EQ(spec.layers[2].attention.sliding_window, 32);
  EXPECT_EQ(spec.layers[3].kind, LayerKind::kSlidingAttention);
}

TEST(Qwen3Family, PerHeadQkNormAndLayerTypes) {
  Json json = base_config("Qwen3ForCausalLM", "qwen3");
  json["use_sliding_window"] = true;
  json["sliding_window"] = 8;
  json["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention",
                         "full_attention"};
  const ModelSpec spec = spec_of(json);
  EXPECT_EQ(spec.family, "qwen3");
  EXPECT_EQ(spec.layers[0].attention.qk_norm, QkNormKind::kPerHead);
  EXPECT_FLOAT_EQ(spec.layers[0].attention.qk_norm_spec.eps, 1e-5f);
  EXPECT_EQ(spec.layers[0].attention.sliding_window, 8);
  EXPECT_EQ(spec.layers[1].attention.sliding_window, 0);
  json["layer_types"] = {"full_attention"};
  EXPECT_THROW(spec_of(json), Error);
}

}  // namespace
}  // namespace kiln
