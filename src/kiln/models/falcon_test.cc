// config.json -> ModelSpec for Falcon: falcon-7b's RefinedWeb config, the new decoder
// architecture and the refusal of ALiBi.
#include <gtest/gtest.h>

#include "kiln/core/error.h"
#include "kiln/models/family.h"
#include "test_util.h"

namespace kiln {
namespace {

HfConfig real_config(const std::string& name) {
  return HfConfig::load(test::data_path("hf_configs/" + name + ".json"));
}

TEST(FalconFamily, Falcon7bIsMultiQueryWithOneSharedNorm) {
  const ModelSpec spec = spec_from_config(real_config("tiiuae__falcon-7b"));
  EXPECT_EQ(spec.family, "falcon");
  EXPECT_EQ(spec.num_layers(), 32);
  const LayerSpec& layer = spec.layers[0];
  EXPECT_EQ(layer.attention.num_heads, 71);
  EXPECT_EQ(layer.attention.num_kv_heads, 1);
  EXPECT_EQ(layer.attention.head_dim, 64);
  EXPECT_EQ(layer.placement, NormPlacement::kParallel);
  EXPECT_TRUE(layer.parallel_shared_norm);
  EXPECT_FALSE(layer.attention.q_bias);
  EXPECT_EQ(layer.mlp.intermediate, 4 * 4544);
  EXPECT_EQ(layer.mlp.activation, Activation::kGeluExact);
  EXPECT_TRUE(spec.tie_word_embeddings);
}

TEST(FalconFamily, FalconNewDecoderArchitectureHasTwoNormsAndGroupedKv) {
  Json json = real_config("tiiuae__falcon-7b").json();
  json["new_decoder_architecture"] = true;
  json["num_kv_heads"] = 8;
  json["n_head"] = 64;
  json["hidden_size"] = 8192;
  const ModelSpec spec = spec_from_config(HfConfig::from_json(json, "cfg"));
  EXPECT_EQ(spec.layers[0].attention.num_kv_heads, 8);
  EXPECT_EQ(spec.layers[0].placement, NormPlacement::kParallel);
  EXPECT_FALSE(spec.layers[0].parallel_shared_norm);
  json["alibi"] = true;
  try {
    spec_from_config(HfConfig::from_json(json, "cfg"));
    FAIL() << "ALiBi accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cfg: key 'alibi': ALiBi position biases are not supported");
  }
}

}  // namespace
}  // namespace kiln
