// Tests of feature detection on small synthetic configs (the conventions real configs use
// for sliding windows, MoE layouts, NoPE layers and unknown layer kinds) and of the value
// formats both sides of the family cross-check share.
#include "kiln/analyze/detect.h"

#include <gtest/gtest.h>

#include <map>

#include "kiln/core/error.h"

namespace kiln::analyze {
namespace {

Json base_config() {
  return Json{{"architectures", {"NewForCausalLM"}},
              {"model_type", "new"},
              {"hidden_size", 64},
              {"num_hidden_layers", 6},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"intermediate_size", 128},
              {"vocab_size", 512},
              {"max_position_embeddings", 4096},
              {"rms_norm_eps", 1e-6}};
}

std::map<std::string, std::string> detect(const Json& json) {
  HfConfig config = HfConfig::from_json(json, "config.json");
  std::map<std::string, std::string> values;
  for (const Feature& f : detect_features(config)) values[f.id] = f.value;
  return values;
}

TEST(AnalyzeDetect, QwenWindowStartsAtMaxWindowLayers) {
  Json json = base_config();
  json["sliding_window"] = 1024;
  json["use_sliding_window"] = true;
  json["max_window_layers"] = 4;
  EXPECT_EQ(detect(json)["attention.sliding_window"],
            "window 1024 on 2 of 6 layers, pattern FFFFSS");
  json["use_sliding_window"] = false;
  EXPECT_EQ(detect(json)["attention.sliding_window"], "none");
}

TEST(AnalyzeDetect, WindowAsLongAsTheContextIsNoWindow) {
  Json json = base_config();
  json["sliding_window"] = 4096;
  EXPECT_EQ(detect(json)["attention.sliding_window"], "none");
  json["sliding_window"] = 4095;
  EXPECT_EQ(detect(json)["attention.sliding_window"], "window 4095 on all 6 layers");
}

TEST(AnalyzeDetect, LayerTypesAndUnknownLayerKinds) {
  Json json = base_config();
  json["sliding_window"] = 128;
  json["layer_types"] = {"sliding_attention", "full_attention",    "linear_attention",
                         "linear_attention",  "sliding_attention", "full_attention"};
  auto values = detect(json);
  EXPECT_EQ(values["attention.sliding_window"], "window 128 on 2 of 6 layers, pattern SFFFSF");
  EXPECT_EQ(values["attention.layer_type"], "linear_attention on 2 of 6 layers");
  json["layer_types"] = {"full_attention"};
  EXPECT_THROW(detect(json), Error);
}

TEST(AnalyzeDetect, SlidingWindowPattern) {
  Json json = base_config();
  json["sliding_window"] = 512;
  json["sliding_window_pattern"] = 3;
  EXPECT_EQ(detect(json)["attention.sliding_window"], "window 512 on 4 of 6 layers, repeating SSF");
}

TEST(AnalyzeDetect, MoeLayouts) {
  Json json = base_config();
  json["n_routed_experts"] = 8;
  json["num_experts_per_tok"] = 2;
  json["moe_intermediate_size"] = 32;
  json["first_k_dense_replace"] = 2;
  json["n_shared_experts"] = 2;
  json["n_group"] = 4;
  json["topk_group"] = 2;
  auto values = detect(json);
  EXPECT_EQ(values["moe.groups"], "none");  // greedy routing ignores the groups
  json["topk_method"] = "group_limited_greedy";
  values = detect(json);
  EXPECT_EQ(values["moe.router"], "softmax_top_k");
  EXPECT_EQ(values["moe"], "8 experts, top-2, expert intermediate 32");
  EXPECT_EQ(values["moe.dense_layers"], "first 2 of 6 layers");
  EXPECT_EQ(values["moe.shared_experts"], "2 shared experts, intermediate 64");
  EXPECT_EQ(values["moe.groups"], "4 groups, top 2 groups");
  EXPECT_EQ(values["mlp.intermediate"], "128");

  json = base_config();
  json["num_experts"] = 8;
  json["num_experts_per_tok"] = 2;
  json["decoder_sparse_step"] = 2;
  json["mlp_only_layers"] = {5};
  EXPECT_EQ(detect(json)["moe.dense_layers"], "4 of 6 layers, pattern DMDMDD");
}

TEST(AnalyzeDetect, PartialRotaryAndNoRopeLayers) {
  Json json = base_config();
  json["partial_rotary_factor"] = 0.5;
  EXPECT_EQ(detect(json)["rope.fraction"], "partial (8 of 16 dims)");
  json = base_config();
  json["no_rope_layers"] = {1, 1, 0, 1, 1, 0};
  EXPECT_EQ(detect(json)["rope.skipped_layers"], "2 of 6 layers, repeating RRN");
}

TEST(AnalyzeDetect, MissingSizeIsAnErrorNamingTheKey) {
  Json json = base_config();
  json.erase("num_attention_heads");
  try {
    detect(json);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_attention_heads"), std::string::npos) << e.what();
  }
}

TEST(AnalyzeFormats, ValuesBothSidesShare) {
  EXPECT_EQ(format_number(10000.0), "10000");
  EXPECT_EQ(format_number(0.4), "0.4");
  EXPECT_EQ(format_number(static_cast<float>(1e-6)), "1e-06");
  EXPECT_EQ(attention_scale_value(0.0, 128), "none");
  EXPECT_EQ(attention_scale_value(1.0 / 16.0, 256), "none");
  EXPECT_EQ(attention_scale_value(static_cast<float>(1.0 / std::sqrt(168.0)), 128), "1/sqrt(168)");
  EXPECT_EQ(attention_scale_value(0.3, 128), "0.3");
  EXPECT_EQ(windows_value({0, 0}), "none");
  EXPECT_EQ(dense_layers_value({true, true}), "none");
  EXPECT_EQ(dense_layers_value({false, false}), "all 2 layers");
  EXPECT_EQ(rotary_fraction_value(0, 64), "full");
  EXPECT_EQ(layer_pattern("SSFSSFSS"), "repeating SSF");
  EXPECT_EQ(layer_pattern("SSFS"), "pattern SSFS");
  Feature choice{"norm.kind", "rms (eps 1e-06)", FeatureKind::kChoice, {}, true};
  EXPECT_EQ(capability_value(choice), "rms");
  Feature off{"attention.sinks", "none", FeatureKind::kSwitch, {}, true};
  EXPECT_EQ(capability_value(off), "");
  Feature on{"attention.sinks", "learned", FeatureKind::kSwitch, {}, true};
  EXPECT_EQ(capability_value(on), "yes");
}

}  // namespace
}  // namespace kiln::analyze
