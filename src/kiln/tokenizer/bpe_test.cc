// The BPE loader's fast merge reader: the strings it hands to the vocabulary lookups (which
// would otherwise hide its mistakes behind the checked reader it falls back to).
#include "kiln/tokenizer/bpe.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kiln {
namespace {

std::vector<std::string> parts_of(const tok::BpeModel::MergeStrings& strings) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < 3 * strings.count; ++i) parts.emplace_back(strings.parts[i]);
  return parts;
}

TEST(BpeMergeStrings, BothFormsEscapesAndThePrefix) {
  const auto strings = tok::BpeModel::read_merge_strings(
      R"([ "a ##b", ["ab", "##c"], "\n ##\u00e9", ["x\"", "##"], "q r"])", "##");
  ASSERT_TRUE(strings.ok);
  EXPECT_EQ(parts_of(strings),
            (std::vector<std::string>{"a", "##b", "ab", "ab", "##c", "abc", "\n", "##\xC3\xA9",
                                      "\n\xC3\xA9", "x\"", "##", "x\"", "q", "r", "qr"}));
  const auto empty = tok::BpeModel::read_merge_strings(" [ ] ", "");
  EXPECT_TRUE(empty.ok);
  EXPECT_EQ(empty.count, 0u);
}

TEST(BpeMergeStrings, FaultsAreFlaggedNotThrown) {
  for (const char* text : {R"(["ab"])", R"(["a b c"])", R"([["a", "b", "c"]])", R"([["a", 1]])",
                           R"([["a", "\q"]])", R"({})", R"(["a b",])", "[\"a \x01\"]"}) {
    EXPECT_FALSE(tok::BpeModel::read_merge_strings(text, "").ok) << text;
  }
}

}  // namespace
}  // namespace kiln
