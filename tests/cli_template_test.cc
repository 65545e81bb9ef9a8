// `kiln template`: the rendered text exactly, --json with the ids, and one-line errors with
// nothing on stdout.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/io/json.h"
#include "test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const char* const kConversation = R"([{"role": "system", "content": "You are a terse assistant."},)"
                                  R"( {"role": "user", "content": "What is 2+2?"}])";

TEST(CliTemplate, PrintsTheRenderedTextExactly) {
  const auto result = test::run_kiln_with_input(
      "template " + test::data_path("tokenizers/qwen3") + " --messages - --add-generation-prompt",
      kConversation);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out,
            "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n<|im_start|>user\nWhat is "
            "2+2?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(result.err, "");
}

TEST(CliTemplate, JsonHasTextAndIdsWithoutAddedSpecialTokens) {
  const std::string dir = test::make_temp_dir("cli_template");
  std::ofstream(dir + "/messages.json") << R"([{"role": "user", "content": "Hello!"}])";
  const auto result = test::run_kiln("template " + test::data_path("tokenizers/gemma3") +
                                     " --messages " + dir + "/messages.json --json");
  fs::remove_all(dir);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const Json out = parse_json(result.out, "output");
  // transformers: one <bos> (from the template, none added by the tokenizer).
  EXPECT_EQ(out["text"], "<bos><start_of_turn>user\nHello!<end_of_turn>\n");
  EXPECT_EQ(out["ids"], Json::parse("[2, 105, 2364, 107, 9259, 236888, 106, 107]"));
}

TEST(CliTemplate, ErrorsAreOneLineWithNothingOnStdout) {
  const std::string qwen3 = test::data_path("tokenizers/qwen3");
  const auto malformed = test::run_kiln_with_input("template " + qwen3 + " --messages -", "[{");
  EXPECT_EQ(malformed.exit_code, 1);
  EXPECT_EQ(malformed.out, "");
  EXPECT_TRUE(malformed.err.starts_with("kiln: error: stdin: malformed JSON: ")) << malformed.err;

  const auto missing = test::run_kiln("template " + qwen3 + " --messages /nonexistent/m.json");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err, "kiln: error: /nonexistent/m.json: cannot open\n");

  const auto raised = test::run_kiln_with_input(
      "template " + test::data_path("tokenizers/gemma3") + " --messages -",
      R"([{"role": "assistant", "content": "x"}])");
  EXPECT_EQ(raised.exit_code, 1);
  EXPECT_EQ(raised.out, "");
  EXPECT_EQ(raised.err,
            "kiln: error: " + test::data_path("tokenizers/gemma3") +
                "/tokenizer_config.json (chat_template): template raised: "
                "Conversation roles must alternate user/assistant/user/assistant/...\n");

  const auto no_template = test::run_kiln_with_input(
      "template " + test::data_path("tokenizers/llama2") + " --messages -", kConversation);
  EXPECT_EQ(no_template.exit_code, 1);
  EXPECT_EQ(no_template.out, "");
  EXPECT_EQ(no_template.err, "kiln: error: " + test::data_path("tokenizers/llama2") +
                                 "/tokenizer_config.json: no \"chat_template\" key (this model "
                                 "has no chat template)\n");
}

}  // namespace
}  // namespace kiln
