// read_special_token_ids: precedence of the config files and error messages.
#include "kiln/tokenizer/special_tokens.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(SpecialTokens, TinycoderUsesEndOfText) {
  const std::string model = test::data_path("../../models/tinycoder");
  const auto tokenizer = Tokenizer::load(model);
  const SpecialTokenIds ids = read_special_token_ids(model, *tokenizer);
  EXPECT_EQ(ids.bos, 0);
  EXPECT_EQ(ids.eos, std::vector<int32_t>{0});
  EXPECT_FALSE(ids.pad.has_value());
}

TEST(SpecialTokens, GenerationConfigListBeatsTokenizerConfig) {
  const std::string dir = test::make_temp_dir("kiln-special");
  const auto tokenizer = Tokenizer::load(test::data_path("tokenizers/llama2"));
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": "<unk>"})";
  SpecialTokenIds ids = read_special_token_ids(dir, *tokenizer);
  EXPECT_EQ(ids.bos, 1);
  EXPECT_EQ(ids.eos, std::vector<int32_t>{2});
  EXPECT_EQ(ids.pad, 0);
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [2, 7]})";
  ids = read_special_token_ids(dir, *tokenizer);
  EXPECT_EQ(ids.eos, (std::vector<int32_t>{2, 7}));
  std::ofstream(dir + "/config.json") << R"({"bos_token_id": "x"})";
  try {
    read_special_token_ids(dir, *tokenizer);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              dir + "/config.json: bos_token_id: expected a token id or a list of them");
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kiln
