// Multimodal checkpoints run their language model: the gemma3_text and llama4_text fixtures
// re-packed as Gemma3ForConditionalGeneration / Llama4ForConditionalGeneration folders (the
// text config under `text_config`, the tensors under the wrapper's language_model in both
// transformers layouts, plus vision-tower tensors) give bitwise the logits of the text
// model, through the built-in wrapper family and through the generic route; the tower's
// tensors are set aside and reported. A sparse Gemma 3 text_config takes Gemma3TextConfig's
// defaults.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "hf_fixtures.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/language_model.h"
#include "kiln/models/loader.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

Tensor logits_of(const LoadedModel& loaded) {
  Model model(loaded.spec, loaded.weights);
  const std::vector<int32_t> ids = {2, 7, 11, 5, 3, 9, 1, 4};
  KvCache cache = model.make_cache(1, static_cast<int64_t>(ids.size()));
  return model.forward(ids.data(), 1, static_cast<int64_t>(ids.size()), cache, {nullptr, false})
      .contiguous(true);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Writes `fixture` as a multimodal folder: `architecture` / `model_type` around its config,
// its tensors renamed by `rename`, and two vision tensors under `tower`.
std::string wrap(const std::string& fixture, const std::string& architecture,
                 const std::string& model_type, const std::string& tower,
                 const std::function<std::string(const std::string&)>& rename) {
  const std::string from = test::hf_fixture_path(fixture);
  const std::string dir = test::make_temp_dir("kiln_multimodal_");
  Json text;
  std::ifstream(from + "/config.json") >> text;
  Json config = {{"architectures", {architecture}},
                 {"model_type", model_type},
                 {"text_config", text},
                 {"vision_config", {{"model_type", "siglip_vision_model"}, {"hidden_size", 8}}}};
  std::ofstream(dir + "/config.json") << config.dump(2);
  const SafetensorsSet source = SafetensorsSet::open(from);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : source.names())
    tensors.emplace_back(rename(name), source.get(name));
  tensors.emplace_back(tower + "vision_model.embeddings.patch_embedding.weight",
                       Tensor::zeros(DType::F32, {8, 3, 2, 2}));
  tensors.emplace_back(tower + "vision_model.post_layernorm.weight",
                       Tensor::zeros(DType::F32, {8}));
  write_safetensors(dir + "/model.safetensors", tensors);
  return dir;
}

std::string new_layout(const std::string& name) {  // transformers >= 4.52
  return name.rfind("model.", 0) == 0 ? "model.language_model." + name.substr(6) : name;
}
std::string old_layout(const std::string& name) {
  return "language_model." + name;
}

struct Case {
  std::string fixture, architecture, model_type, family;
};

TEST(MultimodalWrapper, RunsTheLanguageModelBitwiseInBothLayouts) {
  for (const Case& c :
       {Case{"gemma3_text", "Gemma3ForConditionalGeneration", "gemma3", "gemma3"},
        Case{"llama4_text", "Llama4ForConditionalGeneration", "llama4", "llama4"}}) {
    SCOPED_TRACE(c.fixture);
    const Tensor want = logits_of(load_model(test::hf_fixture_path(c.fixture)));
    for (const auto& [layout, tower] : {std::pair{&new_layout, std::string("model.vision_tower.")},
                                        std::pair{&old_layout, std::string("vision_tower.")}}) {
      const std::string dir = wrap(c.fixture, c.architecture, c.model_type, tower, layout);
      const LoadedModel builtin = load_model(dir);
      EXPECT_EQ(builtin.family->name(), c.family);
      EXPECT_TRUE(bitwise_equal(logits_of(builtin), want));
      const LoadedModel generic = load_model(dir, Residency::kResident, {"auto", ""});
      EXPECT_TRUE(bitwise_equal(logits_of(generic), want));
      // The tower is reported, not silently dropped.
      LanguageModelSource source(open_tensor_source(dir));
      EXPECT_EQ(source.skipped().size(), 2u);
      EXPECT_NE(source.skipped_note().find("vision tower is not run: 2 tensors"), std::string::npos)
          << source.skipped_note();
      const test::CommandResult run = test::run_kiln("bench " + test::shell_quote(dir) +
                                                     " --prompt-tokens 4 --gen-tokens 2 --json");
      EXPECT_EQ(run.exit_code, 0) << run.err;
      EXPECT_NE(run.err.find("the vision tower is not run"), std::string::npos) << run.err;
      fs::remove_all(dir);
    }
  }
}

TEST(MultimodalWrapper, SparseGemma3TextConfigTakesTheClassDefaults) {
  const HfConfig wrapper =
      HfConfig::load(test::data_path("hf_configs/google__gemma-3-27b-it.json"));
  const std::optional<HfConfig> text = language_model_config(wrapper);
  ASSERT_TRUE(text.has_value());
  EXPECT_EQ(text->get_int("vocab_size"), 262208);            // a default
  EXPECT_EQ(text->get_int("hidden_size"), 5376);             // stated
  EXPECT_EQ(text->get_int_list("eos_token_id").size(), 2u);  // the wrapper's [1, 106]
  EXPECT_EQ(text->source(), wrapper.source() + ": text_config");
  const HfConfig plain = HfConfig::load(test::hf_fixture_path("gemma3_text"));
  EXPECT_FALSE(language_model_config(plain).has_value());
}

}  // namespace
}  // namespace kiln
