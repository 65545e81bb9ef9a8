// config.json -> ModelSpec for GPT-2: gpt2-large's real config and the attention scales.
#include <gtest/gtest.h>

#include "kiln/core/error.h"
#include "kiln/models/family.h"
#include "test_util.h"

namespace kiln {
namespace {

HfConfig real_config(const std::string& name) {
  return HfConfig::load(test::data_path("hf_configs/" + name + ".json"));
}

TEST(Gpt2Family, Gpt2LargeHasLearnedPositionsAndConv1dShapes) {
  const ModelSpec spec = spec_from_config(real_config("openai-community__gpt2-large"));
  EXPECT_EQ(spec.family, "gpt2");
  EXPECT_EQ(spec.hidden_size, 1280);
  EXPECT_EQ(spec.num_layers(), 36);
  EXPECT_TRUE(spec.learned_positions);
  EXPECT_EQ(spec.max_position_embeddings, 1024);
  EXPECT_TRUE(spec.tie_word_embeddings);
  const LayerSpec& layer = spec.layers[5];
  EXPECT_EQ(layer.attention.rope.type, RopeType::kNone);
  EXPECT_EQ(layer.attention.num_kv_heads, 20);
  EXPECT_TRUE(layer.attention.q_bias && layer.attention.o_bias);
  EXPECT_FLOAT_EQ(layer.attention.scale, 1.0f / 8.0f);  // head_dim 64
  EXPECT_EQ(layer.norm.kind, NormKind::kLayerNorm);
  EXPECT_EQ(layer.mlp.intermediate, 4 * 1280);  // n_inner absent
  EXPECT_FALSE(layer.mlp.gated);
  EXPECT_EQ(layer.mlp.activation, Activation::kGeluTanh);
}

TEST(Gpt2Family, Gpt2ScalesAttentionByInverseLayerIndex) {
  Json json = real_config("openai-community__gpt2-large").json();
  json["scale_attn_by_inverse_layer_idx"] = true;
  const ModelSpec spec = spec_from_config(HfConfig::from_json(json, "cfg"));
  EXPECT_FLOAT_EQ(spec.layers[0].attention.scale, 1.0f / 8.0f);
  EXPECT_FLOAT_EQ(spec.layers[3].attention.scale, 1.0f / 32.0f);
}

}  // namespace
}  // namespace kiln
