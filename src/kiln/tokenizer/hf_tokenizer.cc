#include "kiln/tokenizer/hf_tokenizer.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/tokenizer/json_reader.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {

std::unique_ptr<HfTokenizer> HfTokenizer::from_json_text(std::string_view text,
                                                         const std::string& path) {
  // The model's vocabulary and merges go through the fast reader; the other (small) members
  // through nlohmann::json.
  JsonReader reader(text, path);
  Json root = Json::object();
  ModelTables tables;
  std::optional<AddedVocabulary> plain_added;  // "added_tokens" when read without a Json tree
  const std::string where = path + ": ";
  reader.expect('{');
  if (!reader.consume('}')) {
    std::string key;
    do {
      reader.read_string(key);
      reader.expect(':');
      if (key == "model" && reader.peek() == '{') {
        root[key] = read_model_object(reader, tables, where + key);
      } else if (key == "added_tokens") {
        const std::string_view value = reader.skip_value();
        plain_added = AddedVocabulary::from_plain_json_text(value);
        if (plain_added) {
          root.erase(key);
        } else {
          root[key] = parse_json(std::string(value), where + key);
        }
      } else {
        root[key] = parse_json(std::string(reader.skip_value()), where + key);
      }
    } while (reader.consume(','));
    reader.expect('}');
  }
  if (!reader.at_end()) reader.fail("unexpected text after the top-level object");

  std::unique_ptr<HfTokenizer> tokenizer(new HfTokenizer());
  const auto member = [&](const char* key) -> const Json& {
    static const Json null_value;
    const auto it = root.find(key);
    return it == root.end() ? null_value : *it;
  };
  tokenizer->added_ =
      plain_added ? std::move(*plain_added)
                  : AddedVocabulary::from_json(member("added_tokens"), where + "added_tokens");
  tokenizer->normalizer_ = make_normalizer(member("normalizer"), where + "normalizer");
  tokenizer->pre_tokenizer_ = make_pre_tokenizer(member("pre_tokenizer"), where + "pre_tokenizer");
  tokenizer->model_ = make_model(required_field(root, "model", where), tables, where + "model");
  tokenizer->post_processor_ =
      make_post_processor(member("post_processor"), where + "post_processor");
  tokenizer->decoder_ = make_decoder(member("decoder"), where + "decoder");
  return tokenizer;
}

void HfTokenizer::encode_segment(std::string_view segment, bool starts_text,
                                 std::vector<int32_t>& ids) const {
  std::string normalized(segment);
  if (normalizer_) normalizer_->normalize(normalized);
  std::vector<TextSegment> segments;
  added_.split(normalized, /*normalized=*/true, segments);
  std::vector<std::string> words;
  for (const TextSegment& piece : segments) {
    if (piece.id >= 0) {
      ids.push_back(piece.id);
      continue;
    }
    words.assign(1, normalized.substr(piece.begin, piece.end - piece.begin));
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(words, starts_text && piece.begin == 0);
    for (const std::string& word : words) model_->tokenize(word, ids);
  }
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special) const {
  check_utf8(text, "text to encode");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<TextSegment> segments;
  added_.split(text, /*normalized=*/false, segments);
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else {
      encode_segment(text.substr(segment.begin, segment.end - segment.begin), segment.begin == 0,
                     ids);
    }
  }
  if (add_special && post_processor_) post_processor_->add_special_tokens(ids);
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* added = added_.find(id)) {
      if (!(skip_special && added->special)) tokens.push_back(added->content);
      continue;
    }
    const std::optional<std::string_view> token = model_->token_of(id);
    if (!token) {
      throw Error("decode: token id " + std::to_string(id) + " is outside the vocabulary (size " +
                  std::to_string(vocab_size()) + ")");
    }
    tokens.emplace_back(*token);
  }
  if (decoder_) {
    decoder_->decode_chain(tokens);
    std::string text;
    for (const std::string& token : tokens) text += token;
    return text;
  }
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) text += ' ';
    text += tokens[i];
  }
  return text;
}

int64_t HfTokenizer::vocab_size() const {
  return std::max(model_->vocab_size(), added_.id_limit());
}

std::optional<std::string> HfTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* added = added_.find(id)) return added->content;
  if (const auto token = model_->token_of(id)) return std::string(*token);
  return std::nullopt;
}

std::optional<int32_t> HfTokenizer::token_to_id(std::string_view token) const {
  if (const auto id = added_.find(token)) return id;
  return model_->id_of(token);
}

bool HfTokenizer::is_special(int32_t id) const {
  const AddedToken* added = added_.find(id);
  return added != nullptr && added->special;
}

}  // namespace kiln::tok
