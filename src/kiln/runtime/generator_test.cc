// The generator on the bundled tinycoder model (bf16 weights, three shards): the golden
// prompts' prefill logits and their 48-token greedy continuations.
#include "kiln/runtime/generator.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "kiln/cli/command.h"
#include "kiln/io/json.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/loader.h"
#include "kiln/tokenizer/tokenizer.h"
#include "test_util.h"

namespace kiln {
namespace {

class Tinycoder : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    loaded_ = new LoadedModel(load_model(cli::default_model_path()));
    model_ = new Model(loaded_->spec, loaded_->weights);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete loaded_;
  }
  static Json golden() {
    return read_json_file(cli::default_model_path() + "/golden.json").at("greedy");
  }
  static LoadedModel* loaded_;
  static Model* model_;
};
LoadedModel* Tinycoder::loaded_ = nullptr;
Model* Tinycoder::model_ = nullptr;

TEST_F(Tinycoder, PromptLogitsMatchGolden) {
  const SafetensorsFile logits_file =
      SafetensorsFile::open(cli::default_model_path() + "/golden.safetensors");
  const Json cases = golden();
  for (size_t k = 0; k < cases.size(); ++k) {
    const std::vector<int32_t> prompt = cases[k].at("prompt_ids").get<std::vector<int32_t>>();
    KvCache cache = model_->make_cache(1, static_cast<int64_t>(prompt.size()));
    const Tensor logits = model_->forward(prompt.data(), 1, prompt.size(), cache);  // [1, T, V]
    const Tensor expected = logits_file.get("prompt" + std::to_string(k) + ".logits");
    const double err = test::max_abs_diff(logits.reshape(expected.shape()), expected);
    std::cout << "prompt " << k << " logits max abs err = " << err << std::endl;
    EXPECT_LE(err, 1e-4);
  }
}

TEST_F(Tinycoder, GreedyContinuationsMatchGolden) {
  for (const Json& c : golden()) {
    const std::vector<int32_t> prompt = c.at("prompt_ids").get<std::vector<int32_t>>();
    std::vector<int32_t> expected = c.at("ids").get<std::vector<int32_t>>();
    Generator generator(*model_, SamplingParams{}, loaded_->spec.eos_token_ids);
    std::vector<int32_t> streamed;
    std::vector<int32_t> ids =
        generator.generate(prompt, static_cast<int64_t>(expected.size() - prompt.size()),
                           [&](int32_t id) { streamed.push_back(id); });
    EXPECT_EQ(streamed, ids);
    ids.insert(ids.begin(), prompt.begin(), prompt.end());
    EXPECT_EQ(ids, expected) << c.at("prompt").get<std::string>();
    const GenerationStats& stats = generator.stats();
    EXPECT_EQ(stats.prompt_tokens, static_cast<int64_t>(prompt.size()));
    EXPECT_EQ(stats.generated_tokens, 48);
  }
}

TEST_F(Tinycoder, TokenizedPromptsStreamTheGoldenText) {
  const std::unique_ptr<Tokenizer> tokenizer = Tokenizer::load(cli::default_model_path());
  for (const Json& c : golden()) {
    const std::string prompt = c.at("prompt").get<std::string>();
    const std::vector<int32_t> prompt_ids = tokenizer->encode(prompt, false);
    EXPECT_EQ(prompt_ids, c.at("prompt_ids").get<std::vector<int32_t>>()) << prompt;
    StreamDecoder stream(*tokenizer);
    std::string text;
    for (int32_t id : prompt_ids) text += stream.push(id);
    Generator generator(*model_, SamplingParams{}, loaded_->spec.eos_token_ids);
    generator.generate(prompt_ids, 48, [&](int32_t id) { text += stream.push(id); });
    text += stream.finish();
    EXPECT_EQ(text, c.at("text").get<std::string>()) << prompt;
  }
}

TEST_F(Tinycoder, StopsAtStopTokenAndTokenLimit) {
  const std::vector<int32_t> prompt = golden()[0].at("prompt_ids").get<std::vector<int32_t>>();
  const std::vector<int32_t> ids = golden()[0].at("ids").get<std::vector<int32_t>>();
  Generator limited(*model_, SamplingParams{}, {});
  EXPECT_EQ(limited.generate(prompt, 3).size(), 3u);
  // Declaring the 5th continuation token a stop token ends generation before it.
  Generator stopping(*model_, SamplingParams{}, {ids[prompt.size() + 4]});
  const std::vector<int32_t> out = stopping.generate(prompt, 48);
  EXPECT_EQ(out,
            std::vector<int32_t>(ids.begin() + prompt.size(), ids.begin() + prompt.size() + 4));
}

}  // namespace
}  // namespace kiln
