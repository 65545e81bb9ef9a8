// Module-level verification: every captured module of every supported fixture matches the
// reference, a corrupted weight is found as the first divergent module, and the HF module
// names of other families map as declared.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "hf_fixtures.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/hf_module_names.h"
#include "kiln/models/loader.h"
#include "kiln/models/weight_names.h"
#include "kiln/verify/reference_check.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

class VerifyModules : public ::testing::TestWithParam<std::string> {};

TEST_P(VerifyModules, EveryCapturedModuleMatches) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  LoadedModel loaded = load_model(dir);
  Model model(loaded.spec, loaded.weights);
  const ReferenceReport report =
      check_against_reference(model, dir + "/reference.safetensors", 1e-4);
  const int64_t layers = loaded.spec.num_layers();
  // Per layer at least: input norm, attention, MLP, layer output (q/k/v when not fused).
  EXPECT_GE(report.modules.size(), static_cast<size_t>(4 * layers));
  double worst = 0.0;
  for (const ModuleComparison& m : report.modules) {
    EXPECT_TRUE(m.passed) << m.module << " " << m.max_abs_err;
    worst = std::max(worst, m.max_abs_err);
  }
  std::cout << GetParam() << ": " << report.modules.size() << " modules, worst max abs err "
            << worst << ", KL mean " << report.kl_mean << " max " << report.kl_max << ", top-1 "
            << report.top1_agreement << ", not compared " << report.not_compared.size()
            << std::endl;
  EXPECT_EQ(report.first_divergent, "");
  EXPECT_EQ(report.top1_agreement, 1.0);
  EXPECT_LT(report.kl_max, 1e-8);
  EXPECT_TRUE(report.passed);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VerifyModules, ::testing::ValuesIn(test::hf_fixture_names()),
                         test::FixtureName());

// A copy of the llama fixture with one weight of layer 1's MLP down projection changed.
std::string llama_with_corrupted_down_proj() {
  const std::string dir = test::make_temp_dir("kiln-verify-corrupt");
  for (const char* file : {"config.json", "generation_config.json", "reference.safetensors"})
    fs::copy_file(test::data_path(std::string("hf/llama/") + file), dir + "/" + file);
  const SafetensorsFile weights =
      SafetensorsFile::open(test::data_path("hf/llama/model.safetensors"));
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : weights.names()) {
    Tensor t = weights.get(name);
    if (name == "model.layers.1.mlp.down_proj.weight") {
      const Tensor f = t.to(DType::F32);
      std::vector<float> values(f.data<float>(), f.data<float>() + f.numel());
      values[7] += 0.5f;
      t = Tensor::from_f32(f.shape(), values);
    }
    tensors.emplace_back(name, t);
  }
  write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

TEST(VerifyCorrupted, NamesLayerOneMlpAsFirstDivergence) {
  const std::string dir = llama_with_corrupted_down_proj();
  const test::CommandResult r = test::run_kiln("verify " + test::shell_quote(dir) + " --json");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const Json report = Json::parse(r.out);
  EXPECT_EQ(report["first_divergent_module"], "model.layers.1.mlp");
  EXPECT_FALSE(report["passed"].get<bool>());
  for (const Json& m : report["modules"]) {
    if (m["module"] == "model.layers.1.mlp") {
      std::cout << "corrupted model.layers.1.mlp: max abs err " << m["max_abs_err"] << std::endl;
      break;
    }
    EXPECT_TRUE(m["passed"].get<bool>()) << m["module"];
  }
  const test::CommandResult table = test::run_kiln("verify " + test::shell_quote(dir));
  EXPECT_EQ(table.exit_code, 1);
  EXPECT_NE(table.out.find("first divergent module: model.layers.1.mlp"), std::string::npos)
      << table.out;
}

TEST(VerifyCorrupted, ListsReferenceModulesWithoutKilnCounterpart) {
  const std::string dir = test::hf_fixture_path("llama");
  LoadedModel loaded = load_model(dir);
  Model model(loaded.spec, loaded.weights);
  const ReferenceReport report =
      check_against_reference(model, dir + "/reference.safetensors", 1e-4);
  const auto& nc = report.not_compared;
  EXPECT_NE(std::find(nc.begin(), nc.end(), "model.layers.0.mlp.down_proj"), nc.end());
  EXPECT_NE(std::find(nc.begin(), nc.end(), "model.layers.1.self_attn.o_proj"), nc.end());
  EXPECT_EQ(std::find(nc.begin(), nc.end(), "model.layers.1.mlp"), nc.end());
}

TEST(HfModuleNames, LlamaDefaults) {
  const HfModuleNames llama;
  EXPECT_EQ(hf_module_for(llama, names::token_embedder()), "model.embed_tokens");
  EXPECT_EQ(hf_module_for(llama, names::input_norm(3)), "model.layers.3.input_layernorm");
  EXPECT_EQ(hf_module_for(llama, names::child(names::attention(12), "query")),
            "model.layers.12.self_attn.q_proj");
  EXPECT_EQ(hf_module_for(llama, names::post_attention_norm(0)),
            "model.layers.0.post_attention_layernorm");
  EXPECT_EQ(hf_module_for(llama, names::layer(1)), "model.layers.1");
  EXPECT_EQ(hf_module_for(llama, names::final_norm()), "model.norm");
  EXPECT_EQ(hf_module_for(llama, names::lm_head()), "lm_head");
  EXPECT_EQ(hf_module_for(llama, "decoder/layers_x/mlp"), "");
}

TEST(HfModuleNames, OtherFamiliesByDeclaration) {
  HfModuleNames gpt2;   // what a GPT-2 family would declare
  gpt2.embedding = "";  // wte + wpe: compared through hidden_states.0
  gpt2.layer = "transformer.h.{i}";
  gpt2.input_norm = "ln_1";
  gpt2.attention = "attn";
  gpt2.query = gpt2.key = gpt2.value = "";  // fused c_attn
  gpt2.post_attention_norm = "ln_2";
  gpt2.final_norm = "transformer.ln_f";
  EXPECT_EQ(hf_module_for(gpt2, names::attention(1)), "transformer.h.1.attn");
  EXPECT_EQ(hf_module_for(gpt2, names::post_attention_norm(0)), "transformer.h.0.ln_2");
  EXPECT_EQ(hf_module_for(gpt2, names::child(names::attention(0), "key")), "");
  EXPECT_EQ(hf_module_for(gpt2, names::token_embedder()), "");

  HfModuleNames neox;
  neox.layer = "gpt_neox.layers.{i}";
  neox.attention = "attention";
  neox.mlp = "mlp";
  EXPECT_EQ(hf_module_for(neox, names::attention(2)), "gpt_neox.layers.2.attention");

  HfModuleNames gemma2;
  gemma2.post_attention_norm = "pre_feedforward_layernorm";
  EXPECT_EQ(hf_module_for(gemma2, names::post_attention_norm(4)),
            "model.layers.4.pre_feedforward_layernorm");
}

}  // namespace
}  // namespace kiln
