// Tests of config.json -> RopeSpec on hand-written configs and on every real config in
// tests/data/hf_configs/.
#include "kiln/models/rope_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>
#include <set>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {

HfConfig config_of(const std::string& text) {
  return HfConfig::from_json(parse_json(text, "test"), "config.json");
}

HfConfig real_config(const std::string& name) {
  return HfConfig::load(test::data_path("hf_configs/" + name + ".json"));
}

// The language model's config of a multimodal wrapper (Gemma 3, Llama 4), else itself.
HfConfig text_config(const HfConfig& config) {
  if (config.json().contains("text_config"))
    return HfConfig::from_json(config.json().at("text_config"), config.source() + ": text_config");
  return config;
}

// Head dimension the RoPE acts on: MLA's rope part, head_dim, or hidden / heads.
int64_t rope_head_dim(const HfConfig& c) {
  if (c.has("qk_rope_head_dim")) return c.get_int("qk_rope_head_dim");
  if (c.has("head_dim")) return c.get_int("head_dim");
  const int64_t hidden = c.has("hidden_size") ? c.get_int("hidden_size") : c.get_int("n_embd");
  const int64_t heads =
      c.has("num_attention_heads") ? c.get_int("num_attention_heads") : c.get_int("n_head");
  return hidden / heads;
}

std::string error_of(const std::string& text, const std::string& layer_type = "") {
  try {
    rope_spec_from_config(config_of(text), layer_type, 16);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RopeConfig, DefaultWhenNothingIsSaid) {
  RopeSpec r = rope_spec_from_config(config_of(R"({"max_position_embeddings": 64})"), "", 16);
  EXPECT_EQ(r.type, RopeType::kDefault);
  EXPECT_EQ(r.theta, 10000.0);
  EXPECT_EQ(r.rotary_dim, 16);
  EXPECT_EQ(r.max_position, 64);
  EXPECT_FALSE(r.interleaved);
}

TEST(RopeConfig, LegacyAndNewFormsAgree) {
  const RopeSpec legacy =
      rope_spec_from_config(config_of(R"({"rope_theta": 500000.0, "max_position_embeddings": 256,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 32}})"),
                            "", 16);
  const RopeSpec current = rope_spec_from_config(
      HfConfig::load(test::data_path("hf_configs/meta-llama__Meta-Llama-3.1-8B.json")), "", 128);
  EXPECT_EQ(legacy.type, RopeType::kLlama3);
  EXPECT_EQ(legacy.theta, 500000.0);
  EXPECT_EQ(legacy.factor, 8.0);
  EXPECT_EQ(legacy.original_max_position, 32);
  EXPECT_EQ(legacy.high_freq_factor, 4.0);
  EXPECT_EQ(current.type, RopeType::kLlama3);
  EXPECT_EQ(current.original_max_position, 8192);
  const RopeSpec v5 =
      rope_spec_from_config(config_of(R"({"max_position_embeddings": 16, "rope_parameters":
                    {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "dynamic"}})"),
                            "", 16);
  EXPECT_EQ(v5.type, RopeType::kDynamic);
  EXPECT_EQ(v5.factor, 2.0);
  EXPECT_EQ(v5.max_position, 16);
}

TEST(RopeConfig, PartialRotaryFromEverySpelling) {
  EXPECT_EQ(
      rope_spec_from_config(config_of(R"({"partial_rotary_factor": 0.4})"), "", 80).rotary_dim, 32);
  EXPECT_EQ(rope_spec_from_config(
                config_of(R"({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                  "partial_rotary_factor": 0.25}})"),
                "", 16)
                .rotary_dim,
            4);
  const RopeSpec neox =
      rope_spec_from_config(config_of(R"({"rotary_pct": 0.25, "rotary_emb_base": 20000})"), "", 64);
  EXPECT_EQ(neox.rotary_dim, 16);
  EXPECT_EQ(neox.theta, 20000.0);
  EXPECT_EQ(rope_spec_from_config(config_of(R"({"rotary_dim": 64})"), "", 256).rotary_dim, 64);
  EXPECT_NE(error_of(R"({"partial_rotary_factor": 0.35})").find("partial_rotary_factor"),
            std::string::npos);
}

TEST(RopeConfig, YarnDefaultsAndDeepSeekMscale) {
  const RopeSpec r = rope_spec_from_config(
      config_of(R"({"max_position_embeddings": 256, "rope_parameters": {"rope_type": "yarn",
                    "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 1e4}})"),
      "", 16);
  EXPECT_EQ(r.type, RopeType::kYarn);
  EXPECT_EQ(r.beta_fast, 32.0);
  EXPECT_EQ(r.beta_slow, 1.0);
  EXPECT_TRUE(r.truncate);
  EXPECT_EQ(r.attention_factor, 0.0);  // derived from the factor later

  const HfConfig v3 = real_config("deepseek-ai__DeepSeek-V3");
  const RopeSpec d = rope_spec_from_config(v3, "", v3.get_int("qk_rope_head_dim"));
  EXPECT_EQ(d.type, RopeType::kYarn);
  EXPECT_EQ(d.factor, 40.0);
  EXPECT_EQ(d.mscale, 1.0);
  EXPECT_EQ(d.mscale_all_dim, 1.0);
  EXPECT_EQ(d.original_max_position, 4096);
  EXPECT_EQ(d.rotary_dim, 64);

  const RopeSpec oss = rope_spec_from_config(real_config("openai__gpt-oss-20b"), "", 64);
  EXPECT_FALSE(oss.truncate);
  EXPECT_EQ(oss.factor, 32.0);

  // No factor: the ratio of the context lengths, as transformers infers it.
  const RopeSpec implied = rope_spec_from_config(
      config_of(R"({"max_position_embeddings": 64, "rope_scaling": {"type": "yarn",
                    "original_max_position_embeddings": 16}})"),
      "", 16);
  EXPECT_EQ(implied.factor, 4.0);
}

TEST(RopeConfig, LongRopePhi3) {
  const RopeSpec r =
      rope_spec_from_config(real_config("microsoft__Phi-3-mini-128k-instruct"), "", 96);
  EXPECT_EQ(r.type, RopeType::kLongRope);
  EXPECT_EQ(r.original_max_position, 4096);  // top-level key
  EXPECT_EQ(r.factor, 131072.0 / 4096.0);
  EXPECT_EQ(r.short_factor.size(), 48u);
  EXPECT_EQ(r.long_factor.size(), 48u);
  EXPECT_NE(
      error_of(
          R"({"max_position_embeddings": 64, "rope_scaling": {"type": "longrope", "short_factor": [1, 2],
                                          "long_factor": [1, 2, 3, 4, 5, 6, 7, 8]}})")
          .find("rope_scaling.short_factor has 2 entries"),
      std::string::npos);
  EXPECT_NE(
      error_of(
          R"({"max_position_embeddings": 64, "rope_scaling": {"type": "longrope", "short_factor": [1, 2]}})")
          .find("long_factor"),
      std::string::npos);
}

TEST(RopeConfig, GemmaLayerTypes) {
  const HfConfig gemma3 = real_config("google__gemma-3-1b-it");
  EXPECT_EQ(rope_spec_from_config(gemma3, "sliding_attention", 256).theta, 10000.0);
  EXPECT_EQ(rope_spec_from_config(gemma3, "full_attention", 256).theta, 1000000.0);
  const RopeSpec nested = rope_spec_from_config(config_of(R"({"rope_parameters": {
          "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}})"),
                                                "full_attention", 16);
  EXPECT_EQ(nested.type, RopeType::kLinear);
  EXPECT_EQ(nested.factor, 8.0);
}

TEST(RopeConfig, ErrorsNameFileAndKey) {
  EXPECT_EQ(error_of(R"({"rope_scaling": {"type": "mrope", "factor": 2}})"),
            "config.json: rope_scaling.rope_type 'mrope' is not supported (Kiln knows default, "
            "linear, dynamic, yarn, llama3, longrope)");
  EXPECT_EQ(error_of(R"({"rope_parameters": {"rope_type": "linear"}})"),
            "config.json: rope_parameters.factor is required for rope type 'linear'");
  EXPECT_EQ(error_of(R"({"rope_scaling": {"rope_type": "llama3", "factor": 8,
                          "original_max_position_embeddings": 8192, "low_freq_factor": 1}})"),
            "config.json: rope_scaling.high_freq_factor is required for rope type 'llama3'");
  EXPECT_EQ(error_of(R"({"rope_parameters": {"sliding_attention": {"rope_type": "linear",
                          "factor": "x"}, "full_attention": {"rope_type": "default"}}})",
                     "sliding_attention"),
            "config.json: rope_parameters.sliding_attention.factor must be a number, got \"x\"");
}

// Every real config parses, for each of its layer types.
TEST(RopeConfig, EveryRealConfigParses) {
  int parsed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(test::data_path("hf_configs"))) {
    if (entry.path().extension() != ".json") continue;
    const HfConfig config = text_config(HfConfig::load(entry.path().string()));
    if (config.model_type() == "gpt2") continue;  // learned absolute positions, no RoPE
    std::set<std::string> layer_types = {""};
    if (config.json().contains("layer_types"))
      for (const Json& t : config.json().at("layer_types"))
        layer_types.insert(t.get<std::string>());
    for (const std::string& layer_type : layer_types) {
      SCOPED_TRACE(entry.path().filename().string() + " layer type '" + layer_type + "'");
      const int64_t head_dim = rope_head_dim(config);
      RopeSpec r;
      EXPECT_NO_THROW(r = rope_spec_from_config(config, layer_type, head_dim));
      EXPECT_GT(r.rotary_dim, 0);
      ++parsed;
    }
  }
  std::cout << "parsed " << parsed << " RoPE settings from tests/data/hf_configs\n";
  EXPECT_GE(parsed, 30);
}

}  // namespace
}  // namespace kiln
