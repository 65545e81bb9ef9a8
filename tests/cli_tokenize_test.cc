// `kiln tokenize`: the --jsonl interface against the goldens, plain output, and errors.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "kiln/io/json.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(CliTokenize, JsonlMatchesGoldens) {
  for (const std::string name : {"tinycoder", "llama2", "tiktoken_cl100k_base", "sp_bpe"}) {
    const std::string folder = test::data_path("tokenizers/" + name);
    const Json strings = read_json_file(test::data_path("tokenizers/strings.json"));
    std::string input;
    for (const Json& s : strings) input += s.dump() + "\n";
    const auto result = test::run_kiln_with_input("tokenize " + folder + " --jsonl", input);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    std::ifstream golden(folder + "/golden.jsonl");
    std::istringstream out(result.out);
    std::string want_line, got_line;
    int lines = 0, mismatches = 0;
    while (std::getline(golden, want_line)) {
      ASSERT_TRUE(std::getline(out, got_line)) << name << " line " << lines;
      const Json want = parse_json(want_line, "golden"), got = parse_json(got_line, "output");
      mismatches += got["ids"] != want["ids"] || got["ids_special"] != want["ids_special"] ||
                    got["decoded"] != want["decoded"];
      ++lines;
    }
    std::cout << name << ": kiln tokenize --jsonl mismatches " << mismatches << "/" << lines
              << "\n";
    EXPECT_EQ(mismatches, 0) << name;
    EXPECT_EQ(lines, 189);
  }
}

TEST(CliTokenize, PrintsTokensAndIds) {
  const auto result =
      test::run_kiln("tokenize " + test::data_path("tokenizers/llama2") + " 'Hi' --special");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, "1\t\"<s>\"\tspecial\n15359\t\"▁Hi\"\nids: [1,15359]\n2 tokens\n");
}

TEST(CliTokenize, InvalidUtf8IsAOneLineError) {
  const auto result = test::run_kiln("tokenize " + test::data_path("tokenizers/tinycoder") +
                                     " \"$(printf 'ab\\377')\"");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.err, "kiln: error: text to encode: invalid UTF-8 at byte 2\n");
}

}  // namespace
}  // namespace kiln
