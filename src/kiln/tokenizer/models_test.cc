// Unigram and WordPiece tokenizer.json models with their usual pipelines (Metaspace, BERT),
// on small hand-made vocabularies whose correct output is worked out by hand.
#include <gtest/gtest.h>

#include "kiln/tokenizer/hf_tokenizer.h"

namespace kiln {
namespace {

TEST(TokenizerModels, WordPieceWithBertPipeline) {
  const auto tokenizer = tok::HfTokenizer::from_json_text(R"({
    "normalizer": {"type": "BertNormalizer", "lowercase": true},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "post_processor": {"type": "BertProcessing", "cls": ["[CLS]", 1], "sep": ["[SEP]", 2]},
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "world": 4, "##s": 5,
                        "un": 6, "##aff": 7, "##able": 8, ",": 9, "!": 10}}})",
                                                          "bert.json");
  const std::vector<int32_t> ids = tokenizer->encode("Héllo, unaffable  WORLDS! xyz", false);
  EXPECT_EQ(ids, (std::vector<int32_t>{3, 9, 6, 7, 8, 4, 5, 10, 0}));
  EXPECT_EQ(tokenizer->encode("hello", true), (std::vector<int32_t>{1, 3, 2}));
  EXPECT_EQ(tokenizer->decode(ids, false), "hello, unaffable worlds! [UNK]");
}

TEST(TokenizerModels, UnigramWithMetaspace) {
  const auto tokenizer = tok::HfTokenizer::from_json_text(R"({
    "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
    "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
    "model": {"type": "Unigram", "unk_id": 0,
              "vocab": [["<unk>", 0], ["▁", -2], ["▁he", -3], ["llo", -3], ["▁hello", -4],
                        ["h", -5], ["e", -5], ["l", -5], ["o", -5]]}})",
                                                          "unigram.json");
  // "▁hello" (-4) beats "▁he" + "llo" (-6); "xy" is unknown and fused into one <unk>.
  const std::vector<int32_t> ids = tokenizer->encode("hello xyhe", false);
  EXPECT_EQ(ids, (std::vector<int32_t>{4, 1, 0, 5, 6}));
  EXPECT_EQ(tokenizer->decode({4, 1, 0}, false), "hello <unk>");
}

}  // namespace
}  // namespace kiln
