// `kiln generate` through the executable: the tinycoder golden texts, speed on stderr, and
// the error for a prompt that is not UTF-8.
#include <gtest/gtest.h>

#include "kiln/cli/command.h"
#include "kiln/io/json.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(CliGenerate, GreedyTinycoderMatchesGoldenText) {
  const Json golden = read_json_file(cli::default_model_path() + "/golden.json").at("greedy");
  for (const Json& c : golden) {
    const std::string prompt = c.at("prompt").get<std::string>();
    const test::CommandResult r = test::run_kiln("generate --prompt " + test::shell_quote(prompt) +
                                                 " --temperature 0 --max-tokens 48");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, c.at("text").get<std::string>()) << prompt;
    EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("bytes per token"), std::string::npos) << r.err;
    std::cout << r.err;
  }
}

TEST(CliGenerate, SeededSamplingIsReproducible) {
  const std::string args = "generate " + test::shell_quote(cli::default_model_path()) +
                           " --prompt 'import os' --max-tokens 16 --temperature 0.9 --top-k 40 "
                           "--top-p 0.95 --seed 7";
  const test::CommandResult a = test::run_kiln(args), b = test::run_kiln(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.out.rfind("import os", 0), 0u) << a.out;
}

TEST(CliGenerate, InvalidUtf8PromptIsAOneLineError) {
  const test::CommandResult r =
      test::run_kiln("generate --prompt " + test::shell_quote("ok \xff\xfe bad"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err, "kiln: error: --prompt: invalid UTF-8 at byte 3\n");
}

// Non-finite or out-of-range sampling values are rejected before anything is printed, with
// the option named and the limit said plainly.
TEST(CliGenerate, BadSamplingValuesAreRejectedBeforeGenerating) {
  const std::pair<const char*, const char*> cases[] = {
      {"--temperature nan", "--temperature: must be a finite number >= 0, got nan"},
      {"--temperature -0.5", "--temperature: must be a finite number >= 0, got -0.5"},
      {"--max-tokens -3", "--max-tokens: must be a finite number >= 0, got -3"},
      {"--top-k inf", "--top-k: must be a finite number >= 0, got inf"},
      {"--top-p 2", "--top-p: must be in (0, 1], got 2"},
      {"--top-p nan", "--top-p: must be in (0, 1], got nan"},
  };
  for (const auto& [option, message] : cases) {
    const test::CommandResult r = test::run_kiln(std::string("generate --prompt hi ") + option);
    EXPECT_NE(r.exit_code, 0) << option;
    EXPECT_TRUE(r.out.empty()) << option << ": " << r.out;
    EXPECT_NE(r.err.find(message), std::string::npos) << option << ": " << r.err;
    EXPECT_LT(r.err.size(), 200u) << r.err;  // no 300-digit range
  }
}

}  // namespace
}  // namespace kiln
