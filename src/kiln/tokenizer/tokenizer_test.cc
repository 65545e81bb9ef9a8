// Unit tests of the tokenizer pieces that goldens do not pin down: UTF-8 errors, lossy
// decoding, streaming, and error messages for bad files.
#include "kiln/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <tuple>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/tokenizer/added_vocabulary.h"
#include "kiln/tokenizer/hf_tokenizer.h"
#include "kiln/tokenizer/utf8.h"
#include "test_util.h"

namespace kiln {
namespace {

std::unique_ptr<Tokenizer> tinycoder() {
  return Tokenizer::load(test::data_path("tokenizers/tinycoder/tokenizer.json"));
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerUtf8, InvalidInputNamesTheByte) {
  const auto tokenizer = tinycoder();
  EXPECT_EQ(error_of([&] { tokenizer->encode("abc\xff", false); }),
            "text to encode: invalid UTF-8 at byte 3");
  EXPECT_EQ(error_of([&] { tokenizer->encode("h\xC3", false); }),
            "text to encode: invalid UTF-8 at byte 1");
  EXPECT_EQ(error_of([&] { tokenizer->encode("\xED\xA0\x80", false); }),  // a surrogate
            "text to encode: invalid UTF-8 at byte 0");
}

TEST(TokenizerUtf8, LossyDecodingMatchesRust) {
  // One U+FFFD per maximal invalid subsequence.
  EXPECT_EQ(tok::utf8_lossy("a\xF0\x9F\x98z"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(tok::utf8_lossy("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok::utf8_lossy("\xE2\x82\xAC"), "\xE2\x82\xAC");
}

TEST(TokenizerStream, NeverEmitsHalfACharacter) {
  const auto tokenizer = tinycoder();
  const std::string text = "naïve 😀 日本語 code";
  const std::vector<int32_t> ids = tokenizer->encode(text, false);
  StreamDecoder stream(*tokenizer);
  std::string joined;
  int pieces = 0;
  for (int32_t id : ids) {
    const std::string piece = stream.push(id);
    EXPECT_EQ(tok::utf8_valid_prefix(piece), piece.size()) << "piece " << pieces;
    pieces += !piece.empty();
    joined += piece;
  }
  joined += stream.finish();
  EXPECT_EQ(joined, text);
  std::cout << ids.size() << " ids streamed as " << pieces << " pieces\n";
  EXPECT_LT(pieces, static_cast<int>(ids.size()));  // some ids hold only part of a character
}

TEST(TokenizerLoad, BadFilesGiveErrorsNamingTheKey) {
  const std::string dir = test::make_temp_dir("kiln-tokenizer");
  const auto write = [&](const std::string& text) {
    const std::string path = dir + "/tokenizer.json";
    std::ofstream(path) << text;
    return path;
  };
  std::string path =
      write("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}");
  EXPECT_EQ(error_of([&] { Tokenizer::load(path); }),
            path + ": model.merges[0]: 'b' is not in the vocabulary");
  path = write("{\"model\": {\"type\": \"Nope\"}}");
  EXPECT_EQ(error_of([&] { Tokenizer::load(path); }),
            path + ": model.type: unsupported model 'Nope'");
  path = write("{\"added_tokens\": [], \"normalizer\": null}");
  EXPECT_EQ(error_of([&] { Tokenizer::load(path); }), path + ": model: missing");
  path = write("{\"model\": {");
  EXPECT_NE(error_of([&] { Tokenizer::load(path); }).find("malformed JSON"), std::string::npos);
  path = write("{\"model\": {\"type\": \"BPE\", \"dropout\": 1e999}}");  // overflows a double
  EXPECT_NE(error_of([&] { Tokenizer::load(path); }).find("model.dropout: malformed JSON"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { Tokenizer::load(dir + "/missing"); }),
            dir + "/missing: no such file or folder");
  std::filesystem::remove_all(dir);
}

TEST(TokenizerLoad, MergeFaultsNameTheMergeOrByte) {
  // Merge lists are read by a fast path that hands any fault to the checked reader; these pin
  // the checked reader's messages (and that faults after good merges are still found).
  const auto error_for = [](const std::string& merges) {
    const std::string text =
        R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3}, "merges": )" +
        merges + "}}";
    return error_of([&] { tok::HfTokenizer::from_json_text(text, "t.json"); });
  };
  EXPECT_EQ(error_for(R"(["a b", "b c"])"),
            "t.json: model.merges[1]: 'bc' is not in the vocabulary");
  EXPECT_EQ(error_for(R"([["a", "z"]])"), "t.json: model.merges[0]: 'z' is not in the vocabulary");
  EXPECT_EQ(error_for(R"(["a b", "ab"])"),
            "t.json: model.merges[1]: expected \"left right\", found \"ab\"");
  EXPECT_EQ(error_for("[[\"a\", \"b\"], [\"\xFF\", \"b\"]]"),
            "t.json: model.merges: malformed JSON at byte 15: invalid UTF-8 in string");
  EXPECT_EQ(error_for("[\"a b\", \"a\xC3 b\"]"),
            "t.json: model.merges: malformed JSON at byte 9: invalid UTF-8 in string");
  EXPECT_EQ(error_for(R"([["a", "b", "c"]])"),
            "t.json: model.merges: malformed JSON at byte 10: expected ']'");
  EXPECT_EQ(error_for(R"([["a", "\q"]])"),
            "t.json: model.merges: malformed JSON at byte 10: bad escape");
}

TEST(TokenizerLoad, BpeMergesWithEscapesPrefixesAndRepeats) {
  // Escaped merge strings, a continuing-subword prefix dropped from the merged token, and a
  // repeated pair that keeps its last rank (so "b c" outranks it and "a bc" wins).
  const auto tokenizer = tok::HfTokenizer::from_json_text(R"({"model": {"type": "BPE",
      "continuing_subword_prefix": "##",
      "vocab": {"a": 0, "##b": 1, "ab": 2, "##c": 3, "##bc": 4, "abc": 5, "##\n": 6, "a\n": 7},
      "merges": ["a ##b", "##b ##c", ["a", "##\n"], "a\u0020##b", "a ##bc"]}})",
                                                          "t.json");
  EXPECT_EQ(tokenizer->encode("abc", false), (std::vector<int32_t>{5}));
  EXPECT_EQ(tokenizer->encode("ab", false), (std::vector<int32_t>{2}));
  EXPECT_EQ(tokenizer->encode("a\n", false), (std::vector<int32_t>{7}));
}

TEST(TokenizerLoad, PlainAddedTokensReadLikeTheJsonTree) {
  const std::string list =
      R"([{"id": 5, "content": "<x>", "special": true},
          {"id": 6, "content": "y\u00e9\n", "lstrip": true, "single_word": true},
          {"id": 7, "content": "z", "special": true, "normalized": true, "rstrip": true}])";
  const auto plain = tok::AddedVocabulary::from_plain_json_text(list);
  ASSERT_TRUE(plain.has_value());
  const auto tree = tok::AddedVocabulary::from_json(Json::parse(list), "added_tokens");
  ASSERT_EQ(plain->tokens().size(), tree.tokens().size());
  for (size_t i = 0; i < tree.tokens().size(); ++i) {
    const tok::AddedToken& a = plain->tokens()[i];
    const tok::AddedToken& b = tree.tokens()[i];
    EXPECT_EQ(std::tie(a.id, a.content, a.special, a.lstrip, a.rstrip, a.single_word, a.normalized),
              std::tie(b.id, b.content, b.special, b.lstrip, b.rstrip, b.single_word, b.normalized))
        << "token " << i;
  }
  // Anything unusual is left to from_json, which names the fault.
  for (const char* odd :
       {R"([{"id": 5, "content": "x", "special": null}])",
        R"([{"id": 5, "content": "x", "extra": 1}])", R"([{"id": 5, "content": "x", "id": 6}])",
        R"([{"id": 07, "content": "x"}])", R"([{"id": -1, "content": "x"}])",
        R"([{"id": 5, "content": ""}])", R"([{"id": 5}])", R"([5])", R"(null)"}) {
    EXPECT_FALSE(tok::AddedVocabulary::from_plain_json_text(odd).has_value()) << odd;
  }
}

TEST(TokenizerDecode, RejectsIdsOutsideTheVocabulary) {
  const auto tokenizer = tinycoder();
  EXPECT_EQ(tokenizer->vocab_size(), 4096);
  EXPECT_EQ(error_of([&] {
              tokenizer->decode({5, 4096}, false);
            }),
            "decode: token id 4096 is outside the vocabulary (size 4096)");
  EXPECT_TRUE(tokenizer->is_special(0));
  EXPECT_EQ(tokenizer->token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(tokenizer->id_to_token(0), "<|endoftext|>");
  EXPECT_EQ(tokenizer->decode({0, 323}, true), "def");
}

}  // namespace
}  // namespace kiln
