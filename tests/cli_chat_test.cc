// `kiln chat` from piped input: replies stream to stdout, one status line per turn on stderr,
// /reset and continued lines work, a model without a chat template is a one-line error.
#include <gtest/gtest.h>

#include "test_util.h"

namespace kiln {
namespace {

const std::string kTemplate =
    "--chat-template " +
    test::shell_quote(test::data_path("tokenizers/qwen3/tokenizer_config.json"));

TEST(CliChat, TurnsResetAndContinuedLines) {
  const test::CommandResult r =
      test::run_kiln_with_input("chat " + kTemplate + " --max-tokens 5 --temperature 0",
                                "def add(a, b):\n/reset\nline one\\\nline two\n/quit\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t statuses = 0;
  for (size_t at = r.err.find("[5 tokens"); at != std::string::npos;
       at = r.err.find("[5 tokens", at + 1))
    ++statuses;
  EXPECT_EQ(statuses, 2u) << r.err;
  EXPECT_NE(r.err.find("(conversation cleared)"), std::string::npos) << r.err;
  // The same first turn gives the same reply (greedy), whatever came after it.
  const test::CommandResult again = test::run_kiln_with_input(
      "chat " + kTemplate + " --max-tokens 5 --temperature 0", "def add(a, b):\n");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(r.out.substr(0, r.out.find('\n')), again.out.substr(0, again.out.find('\n')));
}

TEST(CliChat, NoChatTemplateIsAnError) {
  const test::CommandResult r = test::run_kiln_with_input("chat", "hi\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("has no chat template; pass --chat-template FILE"), std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace kiln
