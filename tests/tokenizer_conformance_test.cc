// Conformance of Kiln's tokenizers with the reference libraries: every folder of
// tests/data/tokenizers/ holds a tokenizer and golden.jsonl (ids, ids with special tokens and
// decoded text for each string of strings.json, made by HF tokenizers, tiktoken or
// SentencePiece). Every string must match exactly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "kiln/io/json.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/tokenizer/utf8.h"
#include "test_util.h"

namespace kiln {
namespace {
namespace fs = std::filesystem;

std::vector<std::string> tokenizer_folders() {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(test::data_path("tokenizers"))) {
    if (entry.is_directory() && fs::exists(entry.path() / "golden.jsonl")) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<Json> read_goldens(const std::string& path) {
  std::ifstream in(path);
  std::vector<Json> records;
  std::string line;
  while (std::getline(in, line)) records.push_back(parse_json(line, path));
  return records;
}

std::string describe(const std::vector<int32_t>& ids) {
  return Json(ids).dump();
}

class TokenizerGoldens : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerGoldens, MatchesReferenceOnEveryString) {
  const std::string folder = test::data_path("tokenizers/" + GetParam());
  const auto tokenizer = Tokenizer::load(folder);
  const std::vector<Json> goldens = read_goldens(folder + "/golden.jsonl");
  const Json strings = read_json_file(test::data_path("tokenizers/strings.json"));
  ASSERT_EQ(goldens.size(), strings.size());

  int ids_bad = 0, special_bad = 0, decoded_bad = 0, skip_bad = 0, stream_bad = 0;
  for (size_t k = 0; k < goldens.size(); ++k) {
    const Json& golden = goldens[k];
    const std::string text = strings[k].get<std::string>();
    ASSERT_EQ(golden["text"].get<std::string>(), text) << "line " << k;
    const std::vector<int32_t> ids = tokenizer->encode(text, false);
    const auto expected_ids = golden["ids"].get<std::vector<int32_t>>();
    if (ids != expected_ids) {
      if (ids_bad++ < 3) {
        ADD_FAILURE() << GetParam() << " string " << k << " " << Json(text).dump().substr(0, 200)
                      << "\n  kiln " << describe(ids) << "\n  want " << describe(expected_ids);
      }
    }
    const std::vector<int32_t> ids_special = tokenizer->encode(text, true);
    if (ids_special != golden["ids_special"].get<std::vector<int32_t>>()) {
      if (special_bad++ < 3) ADD_FAILURE() << GetParam() << " ids_special, string " << k;
    }
    const std::string decoded = tokenizer->decode(expected_ids, false);
    if (decoded != golden["decoded"].get<std::string>()) {
      if (decoded_bad++ < 3) {
        ADD_FAILURE() << GetParam() << " decoded, string " << k << "\n  kiln "
                      << Json(decoded).dump().substr(0, 300) << "\n  want "
                      << golden["decoded"].dump().substr(0, 300);
      }
    }
    if (golden.contains("decoded_skip_special")) {
      const std::string skipped =
          tokenizer->decode(golden["ids_special"].get<std::vector<int32_t>>(), true);
      if (skipped != golden["decoded_skip_special"].get<std::string>()) {
        if (skip_bad++ < 3) ADD_FAILURE() << GetParam() << " decoded_skip_special, string " << k;
      }
    }
    // Streaming gives the same text, one complete UTF-8 piece at a time.
    StreamDecoder stream(*tokenizer, /*skip_special=*/false);
    std::string streamed;
    bool pieces_valid = true;
    for (int32_t id : expected_ids) {
      const std::string piece = stream.push(id);
      pieces_valid &= tok::utf8_valid_prefix(piece) == piece.size();
      streamed += piece;
    }
    streamed += stream.finish();
    if (streamed != decoded || !pieces_valid) {
      if (stream_bad++ < 3) ADD_FAILURE() << GetParam() << " stream decode, string " << k;
    }
  }
  const size_t n = goldens.size();
  std::cout << GetParam() << ": mismatches ids " << ids_bad << "/" << n << ", ids_special "
            << special_bad << "/" << n << ", decoded " << decoded_bad << "/" << n
            << ", decoded_skip_special " << skip_bad << "/" << n << ", stream " << stream_bad << "/"
            << n << "\n";
  RecordProperty("mismatches", ids_bad + special_bad + decoded_bad + skip_bad + stream_bad);
}

INSTANTIATE_TEST_SUITE_P(Folders, TokenizerGoldens, ::testing::ValuesIn(tokenizer_folders()),
                         [](const auto& info) { return info.param; });

// The bundled model's prompts encode to the ids its golden generations start from.
TEST(TokenizerTinycoder, GoldenPromptsEncodeAndDecode) {
  const std::string model = test::data_path("../../models/tinycoder");
  const auto tokenizer = Tokenizer::load(model);
  const Json golden = read_json_file(model + "/golden.json");
  int checked = 0;
  for (const Json& entry : golden.at("greedy")) {
    const std::string prompt = entry.at("prompt").get<std::string>();
    EXPECT_EQ(tokenizer->encode(prompt, false), entry.at("prompt_ids").get<std::vector<int32_t>>())
        << prompt;
    EXPECT_EQ(tokenizer->decode(entry.at("ids").get<std::vector<int32_t>>(), false),
              entry.at("text").get<std::string>());
    ++checked;
  }
  std::cout << "tinycoder golden prompts checked: " << checked << "\n";
  EXPECT_EQ(checked, 5);
}

}  // namespace
}  // namespace kiln
