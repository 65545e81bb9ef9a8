// Module-level verification: every captured module of every supported fixture matches the
// reference, a corrupted weight is found as the first divergent module, and the HF module
// names of other families map as declared.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "hf_fixtures.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/family.h"
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

TEST(VerifyCorrupted, NamesLayerOneDownProjectionAsFirstDivergence) {
  const std::string dir = llama_with_corrupted_down_proj();
  const test::CommandResult r = test::run_kiln("verify " + test::shell_quote(dir) + " --json");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const Json report = Json::parse(r.out);
  EXPECT_EQ(report["first_divergent_module"], "model.layers.1.mlp.down_proj");
  EXPECT_FALSE(report["passed"].get<bool>());
  for (const Json& m : report["modules"]) {
    if (m["module"] == "model.layers.1.mlp.down_proj") {
      std::cout << "corrupted model.layers.1.mlp.down_proj: max abs err " << m["max_abs_err"]
                << std::endl;
      break;
    }
    EXPECT_TRUE(m["passed"].get<bool>()) << m["module"];
  }
  const test::CommandResult table = test::run_kiln("verify " + test::shell_quote(dir));
  EXPECT_EQ(table.exit_code, 1);
  EXPECT_NE(table.out.find("first divergent module: model.layers.1.mlp.down_proj"),
            std::string::npos)
      << table.out;
}

TEST(VerifyCorrupted, ListsReferenceModulesWithoutKilnCounterpart) {
  const std::string dir = test::hf_fixture_path("llama");
  LoadedModel loaded = load_model(dir);
  Model model(loaded.spec, loaded.weights);
  const ReferenceReport report =
      check_against_reference(model, dir + "/reference.safetensors", 1e-4);
  auto reason = [&](const std::string& module) -> std::string {
    for (const NotComparedModule& m : report.not_compared)
      if (m.module == module) return m.reason;
    return "";
  };
  EXPECT_NE(reason("model.layers.0.mlp.up_proj").find("inside model.layers.0.mlp"),
            std::string::npos);
  EXPECT_EQ(reason("model.layers.0.mlp.down_proj"), "");  // compared (Kiln's mlp/wo)
  EXPECT_EQ(reason("model.layers.1.self_attn.o_proj"), "");
  EXPECT_EQ(reason("model.layers.1.mlp"), "");
  for (const NotComparedModule& m : report.not_compared)
    std::cout << "not compared: " << m.module << ": " << m.reason << std::endl;
}

// The worked example of docs/model_bringup.md: Qwen3 labelled as Llama runs without its QK
// norms; verify names the attention output as the first divergence and the unrun norms.
TEST(VerifyCorrupted, Qwen3AsLlamaNamesTheMissingQkNorms) {
  const std::string dir = test::make_temp_dir("kiln-qwen3-as-llama");
  for (const char* file : {"generation_config.json", "model.safetensors", "reference.safetensors"})
    fs::copy_file(test::data_path(std::string("hf/qwen3/") + file), dir + "/" + file);
  Json config = read_json_file(test::data_path("hf/qwen3/config.json"));
  config["architectures"] = Json::array({"LlamaForCausalLM"});
  config["model_type"] = "llama";
  std::ofstream(dir + "/config.json") << config.dump(2);
  LoadedModel loaded = load_model(dir);
  Model model(loaded.spec, loaded.weights);
  const ReferenceReport report =
      check_against_reference(model, dir + "/reference.safetensors", 1e-4);
  EXPECT_EQ(report.first_divergent, "model.layers.0.self_attn.o_proj");
  bool named = false;
  for (const NotComparedModule& m : report.not_compared)
    if (m.module == "model.layers.0.self_attn.q_norm") {
      std::cout << m.module << ": " << m.reason << std::endl;
      named = m.reason.find("has no query_norm") != std::string::npos;
    }
  EXPECT_TRUE(named);
}

std::vector<std::string> modules_for(const HfModuleNames& names, const std::string& kiln) {
  return hf_modules_for(names, kiln);
}
using Paths = std::vector<std::string>;

TEST(HfModuleNames, LlamaDefaults) {
  const HfModuleNames llama;
  EXPECT_EQ(modules_for(llama, names::token_embedder()), Paths{"model.embed_tokens"});
  EXPECT_EQ(modules_for(llama, names::input_norm(3)), Paths{"model.layers.3.input_layernorm"});
  EXPECT_EQ(modules_for(llama, names::child(names::attention(12), "query")),
            Paths{"model.layers.12.self_attn.q_proj"});
  EXPECT_EQ(modules_for(llama, names::child(names::attention(2), "out")),
            Paths{"model.layers.2.self_attn.o_proj"});
  EXPECT_EQ(modules_for(llama, names::post_attention_norm(0)),
            Paths{"model.layers.0.post_attention_layernorm"});
  EXPECT_EQ(modules_for(llama, names::child(names::mlp(1), "wo")),
            Paths{"model.layers.1.mlp.down_proj"});
  EXPECT_EQ(modules_for(llama, names::child(names::mlp(1), "gate")),
            Paths{"model.layers.1.mlp.gate"});
  EXPECT_EQ(modules_for(llama, names::layer(1)), Paths{"model.layers.1"});
  EXPECT_EQ(modules_for(llama, names::final_norm()), Paths{"model.norm"});
  EXPECT_EQ(modules_for(llama, names::lm_head()), Paths{"lm_head"});
  EXPECT_EQ(modules_for(llama, "decoder/layers_x/mlp"), Paths{});
}

// Every registered family declares its names through hf_modules(spec); those of GPT-2 and
// Gemma 2 map as HF names its modules.
TEST(HfModuleNames, FamilyDeclarations) {
  const LoadedModel gpt2 = load_model(test::hf_fixture_path("gpt2"));
  const HfModuleNames g = family_for(gpt2.config).hf_modules(gpt2.spec);
  EXPECT_EQ(modules_for(g, names::attention(1)), Paths{"transformer.h.1.attn"});
  EXPECT_EQ(modules_for(g, names::post_attention_norm(0)), Paths{"transformer.h.0.ln_2"});
  EXPECT_EQ(modules_for(g, names::child(names::attention(0), "key")), Paths{});
  EXPECT_EQ(modules_for(g, names::token_embedder()), Paths{});
  EXPECT_NE(hf_not_compared_reason(g, "transformer.h.0.attn.c_attn", {}).find("fused QKV"),
            std::string::npos);

  const LoadedModel gemma2 = load_model(test::hf_fixture_path("gemma2"));
  const HfModuleNames g2 = family_for(gemma2.config).hf_modules(gemma2.spec);
  EXPECT_EQ(modules_for(g2, names::attention(4)), Paths{"model.layers.4.post_attention_layernorm"});
  EXPECT_EQ(modules_for(g2, names::child(names::attention(4), "out")),
            (Paths{"model.layers.4.self_attn.o_proj", "model.layers.4.self_attn"}));
  EXPECT_EQ(modules_for(g2, names::pre_ffw_norm(4)),
            Paths{"model.layers.4.pre_feedforward_layernorm"});
  EXPECT_EQ(hf_not_compared_reason(g2, "model.layers.0.mlp.dropout", {}),
            "dropout: the identity at inference (its input is compared)");
}

}  // namespace
}  // namespace kiln
