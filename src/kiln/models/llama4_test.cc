// The Llama 4 families: the per-layer settings transformers derives when the config leaves
// them out (NoPE interval, chunked RoPE layers, MoE step), and the multimodal wrapper's
// language model, which must compute exactly what the text model computes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/family.h"
#include "kiln/models/loader.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

Json text_config() {
  return Json::parse(R"({
    "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text",
    "vocab_size": 32, "hidden_size": 16, "intermediate_size": 8, "intermediate_size_mlp": 24,
    "num_hidden_layers": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 8, "rms_norm_eps": 1e-5, "num_local_experts": 4, "num_experts_per_tok": 1,
    "interleave_moe_layer_step": 2, "attention_chunk_size": 16, "no_rope_layer_interval": 4,
    "floor_scale": 32, "attn_scale": 0.2, "rope_theta": 500000.0})");
}

TEST(Llama4Family, DerivesNopeChunkedAndMoeLayersLikeTransformers) {
  const ModelSpec spec = spec_from_config(HfConfig::from_json(text_config(), "config.json"));
  EXPECT_EQ(spec.family, "llama4_text");
  ASSERT_EQ(spec.num_layers(), 8);
  for (int64_t i = 0; i < 8; ++i) {
    const LayerSpec& layer = spec.layers[i];
    const AttentionSpec& a = layer.attention;
    const bool nope = (i + 1) % 4 == 0, moe = (i + 1) % 2 == 0;
    SCOPED_TRACE("layer " + std::to_string(i));
    EXPECT_EQ(a.rope.type == RopeType::kNone, nope);
    EXPECT_EQ(a.chunk_size, nope ? 0 : 16);
    EXPECT_EQ(a.qk_norm, nope ? QkNormKind::kNone : QkNormKind::kL2);
    EXPECT_EQ(a.temperature_floor_scale, nope ? 32.0 : 0.0);
    EXPECT_EQ(a.temperature_attn_scale, nope ? 0.2 : 0.0);
    EXPECT_EQ(a.rope.interleaved, !nope);
    EXPECT_EQ(layer.moe.enabled(), moe);
    if (moe) {
      EXPECT_EQ(layer.moe.router, RouterKind::kTopKSigmoid);
      EXPECT_TRUE(layer.moe.weight_expert_input);
      EXPECT_EQ(layer.moe.expert_intermediate, 8);
      EXPECT_EQ(layer.moe.num_shared_experts, 1);
      EXPECT_EQ(layer.moe.shared_intermediate, 8);
    } else {
      EXPECT_EQ(layer.mlp.intermediate, 24);
    }
  }
  // to_json states the new settings.
  const Json json = spec.to_json();
  EXPECT_EQ(json["layers"][0]["attention"]["chunk_size"], 16);
  EXPECT_EQ(json["layers"][0]["attention"]["qk_norm"], "l2");
  EXPECT_EQ(json["layers"][3]["attention"]["temperature_floor_scale"], 32.0);
  EXPECT_EQ(json["layers"][3]["attention"]["temperature_attn_scale"], 0.2);
  EXPECT_EQ(json["layers"][3]["attention"]["rope"]["type"], "none");
  EXPECT_EQ(json["layers"][1]["moe"]["router"], "top_k_sigmoid");
  EXPECT_EQ(json["layers"][1]["moe"]["weight_expert_input"], true);
  // Explicit lists win; layer_types decides which layers are chunked.
  Json config = text_config();
  config["no_rope_layers"] = Json::array({0, 1, 1, 1, 1, 1, 1, 1});
  config["moe_layers"] = Json::array({0});
  config["layer_types"] = Json::array(
      {"full_attention", "chunked_attention", "full_attention", "chunked_attention",
       "chunked_attention", "chunked_attention", "chunked_attention", "chunked_attention"});
  config["use_qk_norm"] = false;
  config["attn_temperature_tuning"] = false;
  const ModelSpec listed = spec_from_config(HfConfig::from_json(config, "config.json"));
  EXPECT_EQ(listed.layers[0].attention.rope.type, RopeType::kNone);
  EXPECT_EQ(listed.layers[0].attention.temperature_floor_scale, 0.0);
  EXPECT_EQ(listed.layers[3].attention.rope.type, RopeType::kDefault);
  EXPECT_EQ(listed.layers[2].attention.chunk_size, 0);
  EXPECT_EQ(listed.layers[3].attention.chunk_size, 16);
  EXPECT_EQ(listed.layers[1].attention.qk_norm, QkNormKind::kNone);
  EXPECT_TRUE(listed.layers[0].moe.enabled());
  EXPECT_FALSE(listed.layers[1].moe.enabled());
}

// The llama4_text fixture wrapped as Llama4ForConditionalGeneration: config under
// text_config, tensors under language_model.
std::string wrapped_fixture() {
  const std::string source = test::data_path("hf/llama4_text");
  const std::string dir = test::make_temp_dir("kiln-llama4-wrapper");
  Json text = read_json_file(source + "/config.json");
  Json wrapper;
  wrapper["architectures"] = Json::array({"Llama4ForConditionalGeneration"});
  wrapper["model_type"] = "llama4";
  wrapper["eos_token_id"] = text["eos_token_id"];
  text.erase("architectures");
  text.erase("eos_token_id");  // inherited from the wrapper
  wrapper["text_config"] = text;
  wrapper["vision_config"] = Json::object({{"model_type", "llama4_vision_model"}});
  std::ofstream(dir + "/config.json") << wrapper.dump(2);
  const SafetensorsFile weights = SafetensorsFile::open(source + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : weights.names())
    tensors.emplace_back("language_model." + name, weights.get(name));
  write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

TEST(Llama4Family, WrapperRunsItsLanguageModelExactlyLikeTheTextModel) {
  const std::string dir = wrapped_fixture();
  const LoadedModel wrapped = load_model(dir);
  const LoadedModel text = load_model(test::data_path("hf/llama4_text"));
  EXPECT_EQ(wrapped.spec.family, "llama4");
  EXPECT_EQ(wrapped.spec.architecture, "Llama4ForConditionalGeneration");
  EXPECT_EQ(wrapped.spec.eos_token_ids, text.spec.eos_token_ids);
  EXPECT_EQ(family_for(wrapped.config).hf_modules(wrapped.spec).layers,
            "language_model.model.layers");
  const std::vector<int32_t> ids = {1, 17, 300, 42, 9, 5, 77, 511, 3, 250, 8, 64};  // [1, 12]
  auto logits_of = [&](const LoadedModel& loaded) {
    const Model model(loaded.spec, loaded.weights);
    KvCache cache = model.make_cache(1, 12);
    return model.forward(ids.data(), 1, 12, cache);
  };
  const double err = test::max_abs_diff(logits_of(wrapped), logits_of(text));
  std::cout << "llama4 wrapper vs llama4_text logits max abs diff = " << err << std::endl;
  EXPECT_EQ(err, 0.0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
