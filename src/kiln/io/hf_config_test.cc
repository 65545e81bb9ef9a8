// config.json reading: RoPE in its legacy and transformers-5 forms, and errors that name the
// file and key.
#include "kiln/io/hf_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

HfConfig load_fixture(const std::string& relative) {
  return HfConfig::load(test::data_path(relative));
}

// The message of the kiln::Error that `fn` throws ("" when none).
template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    std::cout << "  error: " << e.what() << "\n";
    return e.what();
  }
  return "";
}

TEST(HfConfig, LegacyRopeScalingWithRopeType) {
  HfConfig config = load_fixture("hf_configs/meta-llama__Meta-Llama-3.1-8B.json");
  RopeParameters rope = config.rope();
  EXPECT_EQ(rope.type, "llama3");
  EXPECT_EQ(rope.theta, 500000.0);
  EXPECT_EQ(rope.params.at("factor").get<double>(), 8.0);
  EXPECT_EQ(rope.params.at("original_max_position_embeddings").get<int>(), 8192);
  EXPECT_FALSE(rope.params.contains("rope_type"));
}

TEST(HfConfig, LegacyRopeScalingWithType) {
  RopeParameters yarn = load_fixture("hf_configs/deepseek-ai__DeepSeek-V3.json").rope();
  EXPECT_EQ(yarn.type, "yarn");
  EXPECT_EQ(yarn.theta, 10000.0);
  EXPECT_EQ(yarn.params.at("factor").get<double>(), 40.0);
  EXPECT_EQ(yarn.params.at("mscale_all_dim").get<double>(), 1.0);
  RopeParameters longrope =
      load_fixture("hf_configs/microsoft__Phi-3-mini-128k-instruct.json").rope();
  EXPECT_EQ(longrope.type, "longrope");
  EXPECT_EQ(longrope.params.at("short_factor").size(), 48u);
}

TEST(HfConfig, LegacyWithoutScaling) {
  RopeParameters llama2 = load_fixture("hf_configs/meta-llama__Llama-2-7b-hf.json").rope();
  EXPECT_EQ(llama2.type, "default");
  EXPECT_EQ(llama2.theta, 10000.0);
  RopeParameters phi2 = load_fixture("hf_configs/microsoft__phi-2.json").rope();
  EXPECT_EQ(phi2.type, "default");
  EXPECT_EQ(phi2.params.at("partial_rotary_factor").get<double>(), 0.4);
}

TEST(HfConfig, LegacyLocalBaseFrequencyForSlidingLayers) {
  HfConfig config = load_fixture("hf_configs/google__gemma-3-1b-it.json");
  EXPECT_EQ(config.rope().theta, 1000000.0);
  EXPECT_EQ(config.rope("full_attention").theta, 1000000.0);
  EXPECT_EQ(config.rope("sliding_attention").theta, 10000.0);
  EXPECT_EQ(config.rope("sliding_attention").type, "default");
}

TEST(HfConfig, RopeParametersFlat) {
  RopeParameters yarn = load_fixture("hf/deepseek_v3").rope();
  EXPECT_EQ(yarn.type, "yarn");
  EXPECT_EQ(yarn.theta, 10000.0);
  EXPECT_EQ(yarn.params.at("factor").get<double>(), 4.0);
  EXPECT_EQ(yarn.params.at("original_max_position_embeddings").get<int>(), 16);
  RopeParameters llama3 = load_fixture("hf/llama_rope_llama3/config.json").rope();
  EXPECT_EQ(llama3.type, "llama3");
  EXPECT_EQ(llama3.theta, 500000.0);
  RopeParameters longrope = load_fixture("hf/phi3").rope();
  EXPECT_EQ(longrope.type, "longrope");
  EXPECT_EQ(longrope.params.at("long_factor").size(), 8u);
  RopeParameters partial = load_fixture("hf/phi").rope();
  EXPECT_EQ(partial.params.at("partial_rotary_factor").get<double>(), 0.5);
}

TEST(HfConfig, RopeParametersKeyedByLayerType) {
  HfConfig config = load_fixture("hf/gemma3_text");
  EXPECT_EQ(config.rope("full_attention").theta, 1000000.0);
  EXPECT_EQ(config.rope("sliding_attention").theta, 10000.0);
  EXPECT_EQ(config.rope().theta, 1000000.0) << "the global set is full_attention's";
  std::string message = error_of([&] { config.rope("chunked_attention"); });
  EXPECT_NE(message.find("config.json"), std::string::npos);
  EXPECT_NE(message.find("chunked_attention"), std::string::npos);
}

TEST(HfConfig, RopeParametersFallBackToTopLevelTheta) {
  HfConfig config = HfConfig::from_json(
      Json::parse(R"({"rope_theta": 250000, "rope_parameters": {"rope_type": "default"}})"),
      "inline.json");
  EXPECT_EQ(config.rope().theta, 250000.0);
}

TEST(HfConfig, BadRopeValuesNameTheKey) {
  HfConfig config =
      HfConfig::from_json(Json::parse(R"({"rope_scaling": {"rope_type": 3}})"), "bad_rope.json");
  std::string message = error_of([&] { config.rope(); });
  EXPECT_NE(message.find("bad_rope.json: rope_scaling.rope_type"), std::string::npos);
  HfConfig list = HfConfig::from_json(Json::parse(R"({"rope_parameters": [1]})"), "list.json");
  message = error_of([&] { list.rope(); });
  EXPECT_NE(message.find("list.json: key 'rope_parameters'"), std::string::npos);
}

TEST(HfConfig, MissingKeyNamesFileAndKey) {
  HfConfig config = load_fixture("hf/llama");
  EXPECT_EQ(config.get_int("hidden_size"), 64);
  std::string message = error_of([&] { config.get_int("num_experts"); });
  EXPECT_NE(message.find(test::data_path("hf/llama/config.json")), std::string::npos);
  EXPECT_NE(message.find("missing required key 'num_experts'"), std::string::npos);
  message = error_of([&] { config.get_string("hidden_size"); });
  EXPECT_NE(message.find("key 'hidden_size' must be a string"), std::string::npos);
  EXPECT_EQ(config.get_int("num_experts", 0), 0);
  EXPECT_TRUE(config.keys_read().count("num_experts"));
}

TEST(HfConfig, MalformedJsonNamesTheFile) {
  std::string dir = test::make_temp_dir("kiln-config");
  std::ofstream(dir + "/config.json") << R"({"hidden_size": 64,, })";
  std::string message = error_of([&] { HfConfig::load(dir); });
  EXPECT_NE(message.find(dir + "/config.json: malformed JSON"), std::string::npos);
  EXPECT_EQ(message.find('\n'), std::string::npos);
  std::ofstream(dir + "/config.json", std::ios::trunc) << "[1, 2]";
  message = error_of([&] { HfConfig::load(dir); });
  EXPECT_NE(message.find(dir + "/config.json: config is not a JSON object"), std::string::npos);
  fs::remove_all(dir);
  message = error_of([&] { HfConfig::load(dir); });
  EXPECT_NE(message.find(dir + ": no such file"), std::string::npos);
}

TEST(HfConfig, EveryRealConfigHasReadableRope) {
  int count = 0;
  for (const auto& entry : fs::directory_iterator(test::data_path("hf_configs"))) {
    HfConfig config = HfConfig::load(entry.path().string());
    RopeParameters rope = config.rope();
    EXPECT_GT(rope.theta, 0.0) << entry.path();
    ++count;
  }
  std::cout << "  " << count << " configs read\n";
  EXPECT_GT(count, 0);
}

}  // namespace
}  // namespace kiln
