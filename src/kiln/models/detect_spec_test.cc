// The generic detector and the built-in families agree: for every HF fixture and every real
// config.json in the tests that a registered family builds, detect_spec() states every field
// of the family's ModelSpec with the same value. Also: ModelSpec JSON round trips.
#include "kiln/models/detect_spec.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/models/family.h"
#include "test_util.h"

namespace kiln {
namespace {

// Every config the tests hold: tests/data/hf/*/config.json and tests/data/hf_configs/*.json.
std::vector<std::string> test_configs() {
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(test::data_path("hf")))
    if (std::filesystem::exists(entry.path() / "config.json"))
      paths.push_back((entry.path() / "config.json").string());
  for (const auto& entry : std::filesystem::directory_iterator(test::data_path("hf_configs")))
    if (entry.path().extension() == ".json") paths.push_back(entry.path().string());
  std::sort(paths.begin(), paths.end());
  return paths;
}

// Paths ("layers[2].attention.q_bias") where `a` and `b` differ.
void differences(const Json& a, const Json& b, const std::string& path,
                 std::vector<std::string>& out) {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it)
      differences(it.value(), b.contains(it.key()) ? b.at(it.key()) : Json(),
                  path + (path.empty() ? "" : ".") + it.key(), out);
    return;
  }
  if (a.is_array() && b.is_array() && a.size() == b.size() && !a.empty() && a[0].is_object()) {
    for (size_t i = 0; i < a.size(); ++i)
      differences(a[i], b[i], path + "[" + std::to_string(i) + "]", out);
    return;
  }
  if (a != b) out.push_back(path + ": detected " + a.dump() + ", family " + b.dump());
}

TEST(DetectSpec, EqualsEveryFamilysSpecFieldByField) {
  int compared = 0;
  for (const std::string& path : test_configs()) {
    const HfConfig config = HfConfig::load(path);
    const Family* family = nullptr;
    try {
      family = &family_for(config);
    } catch (const Error&) {
      continue;
    }
    SCOPED_TRACE(path);
    Json detected = detect_spec(config).to_json();
    Json built = family->build_spec(config).to_json();
    detected.erase("family");
    built.erase("family");
    // A QK-norm setting without QK norms computes nothing; families leave it at any value.
    for (size_t i = 0; i < detected["layers"].size() && i < built["layers"].size(); ++i)
      for (Json* layers : {&detected["layers"], &built["layers"]})
        if ((*layers)[i]["attention"]["qk_norm"] == "none")
          (*layers)[i]["attention"].erase("qk_norm_spec");
    std::vector<std::string> diff;
    differences(detected, built, "", diff);
    for (const std::string& d : diff) ADD_FAILURE() << d;
    std::cout << std::filesystem::path(path).parent_path().filename().string() << "/"
              << std::filesystem::path(path).filename().string() << " (" << family->name()
              << "): " << diff.size() << " fields differ\n";
    ++compared;
  }
  std::cout << compared << " configs compared\n";
  EXPECT_GE(compared, 40);
}

// Options real configs state that no fixture has: Granite's μP multipliers, OLMo's clip_qkv,
// DeepSeek-V2's group_limited_greedy routing, Qwen2-MoE's gated shared expert, and
// Phi-3.5-MoE's sparsemixer router and LongRoPE magnitudes (its real config).
TEST(DetectSpec, ReadsOptionsNoFixtureHas) {
  const Json base = {{"architectures", {"X"}},   {"vocab_size", 64},
                     {"hidden_size", 16},        {"num_hidden_layers", 2},
                     {"num_attention_heads", 2}, {"intermediate_size", 32}};
  auto detect = [&](const std::string& type, Json extra) {
    Json config = base;
    config["model_type"] = type;
    for (auto it = extra.begin(); it != extra.end(); ++it) config[it.key()] = it.value();
    return detect_spec(HfConfig::from_json(config, type + "/config.json"));
  };
  const ModelSpec granite = detect("granite", {{"embedding_multiplier", 12.0},
                                               {"residual_multiplier", 0.22},
                                               {"attention_multiplier", 0.0078125},
                                               {"logits_scaling", 8.0}});
  EXPECT_EQ(granite.embedding_scale, 12.0f);
  EXPECT_EQ(granite.logit_scale, 0.125f);
  for (const LayerSpec& layer : granite.layers) {
    EXPECT_EQ(layer.residual_scale, 0.22f);
    EXPECT_EQ(layer.attention.scale, 0.0078125f);
  }
  EXPECT_EQ(detect("olmo", {{"clip_qkv", 8.0}}).layers[1].attention.clip_qkv, 8.0f);
  EXPECT_EQ(detect("olmo", {{"clip_qkv", nullptr}}).layers[1].attention.clip_qkv, 0.0f);
  EXPECT_THROW(detect("olmo", {{"clip_qkv", -1.0}}), Error);

  const Json v2 = {{"n_routed_experts", 8},
                   {"num_experts_per_tok", 2},
                   {"moe_intermediate_size", 8},
                   {"n_group", 4},
                   {"topk_group", 2},
                   {"topk_method", "group_limited_greedy"},
                   {"routed_scaling_factor", 16.0}};
  const MoeSpec grouped = detect("deepseek_v2", v2).layers[1].moe;
  EXPECT_EQ(grouped.router, RouterKind::kSoftmaxTopK);
  EXPECT_EQ(grouped.n_group, 4);
  EXPECT_EQ(grouped.topk_group, 2);
  Json greedy = v2;
  greedy["topk_method"] = "greedy";  // plain greedy routing ignores the groups
  EXPECT_EQ(detect("deepseek_v2", greedy).layers[1].moe.n_group, 1);

  const MoeSpec qwen2_moe = detect("qwen2_moe", {{"num_experts", 4},
                                                 {"num_experts_per_tok", 2},
                                                 {"moe_intermediate_size", 8},
                                                 {"shared_expert_intermediate_size", 24}})
                                .layers[0]
                                .moe;
  EXPECT_TRUE(qwen2_moe.shared_expert_gate);
  EXPECT_EQ(qwen2_moe.shared_intermediate, 24);

  const ModelSpec phimoe = detect_spec(
      HfConfig::load(test::data_path("hf_configs/microsoft__Phi-3.5-MoE-instruct.json")));
  EXPECT_EQ(phimoe.layers[0].moe.router, RouterKind::kSparseMixer);
  EXPECT_EQ(phimoe.layers[0].moe.sparsemixer_eps, 0.01f);
  EXPECT_NEAR(phimoe.layers[0].attention.rope.short_mscale, 1.243163, 1e-6);
  EXPECT_NEAR(phimoe.layers[0].attention.rope.long_mscale, 1.243163, 1e-6);
  EXPECT_EQ(phimoe.layers[0].norm.kind, NormKind::kLayerNorm);
  EXPECT_TRUE(phimoe.lm_head_bias);
}

TEST(ModelSpecJson, RoundTripsEveryFixtureSpec) {
  for (const std::string& path : test_configs()) {
    const HfConfig config = HfConfig::load(path);
    ModelSpec spec;
    try {
      spec = detect_spec(config);
    } catch (const Error&) {
      continue;
    }
    SCOPED_TRACE(path);
    EXPECT_EQ(ModelSpec::from_json(spec.to_json(), "spec").to_json(), spec.to_json());
  }
}

TEST(ModelSpecJson, BadFieldsNameTheKey) {
  Json json = detect_spec(HfConfig::load(test::data_path("hf/llama"))).to_json();
  Json bad = json;
  bad["layers"][1]["attention"]["qk_norm"] = "l3";
  try {
    ModelSpec::from_json(bad, "f.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f.json: key 'layers[1].attention.qk_norm' is \"l3\""),
              std::string::npos)
        << e.what();
  }
  bad = json;
  bad["layers"][0]["mlp"]["gatd"] = true;
  EXPECT_THROW(ModelSpec::from_json(bad, "f.json"), Error);
  bad = json;
  bad["hidden_size"] = "64";
  EXPECT_THROW(ModelSpec::from_json(bad, "f.json"), Error);
}

}  // namespace
}  // namespace kiln
