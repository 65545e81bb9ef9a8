#include "kiln/tokenizer/added_vocabulary.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/json_reader.h"
#include "kiln/tokenizer/regex.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

// Unicode White_Space (Rust's char::is_whitespace).
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// A word character for single_word tokens: alphanumeric (Unicode) or '_'.
bool is_word_character(std::string_view character) {
  static const Regex word(R"(^[\p{Alphabetic}\p{N}_])", "single_word");
  size_t begin, end;
  return word.find(character, 0, begin, end);
}

// Start of the last character of non-empty valid UTF-8 `text`.
size_t last_character_start(std::string_view text) {
  size_t pos = text.size() - 1;
  while (pos > 0 && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

}  // namespace

void AddedVocabulary::Trie::insert(std::string_view content, int32_t token_index) {
  if (token_at_node.empty()) token_at_node.push_back(-1);
  int32_t node = 0;
  for (unsigned char byte : content) {
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | byte;
    const auto it = edges.find(key);
    if (it != edges.end()) {
      node = it->second;
    } else {
      const int32_t child = static_cast<int32_t>(token_at_node.size());
      token_at_node.push_back(-1);
      edges.emplace(key, child);
      node = child;
    }
  }
  first_byte[static_cast<unsigned char>(content[0])] = true;
  token_at_node[node] = token_index;
}

int32_t AddedVocabulary::Trie::longest_match(std::string_view text, size_t pos,
                                             size_t& length) const {
  int32_t best = -1;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto it =
        edges.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges.end()) break;
    node = it->second;
    if (token_at_node[node] >= 0) {
      best = token_at_node[node];
      length = i + 1 - pos;
    }
  }
  return best;
}

AddedVocabulary AddedVocabulary::from_json(const Json& list, const std::string& where) {
  AddedVocabulary vocab;
  if (list.is_null()) return vocab;
  if (!list.is_array()) throw Error(where + ": expected an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string item_where = child_where(where, i);
    const Json& item = list[i];
    AddedToken token;
    const int64_t id = int_field(item, "id", item_where);
    if (id < 0 || id > INT32_MAX) throw Error(child_where(item_where, "id") + ": out of range");
    token.id = static_cast<int32_t>(id);
    token.content = string_field(item, "content", item_where);
    if (token.content.empty()) throw Error(child_where(item_where, "content") + ": empty");
    check_utf8(token.content, child_where(item_where, "content"));
    token.special = bool_field_or(item, "special", item_where, false);
    token.lstrip = bool_field_or(item, "lstrip", item_where, false);
    token.rstrip = bool_field_or(item, "rstrip", item_where, false);
    token.single_word = bool_field_or(item, "single_word", item_where, false);
    token.normalized = bool_field_or(item, "normalized", item_where, !token.special);
    vocab.add(std::move(token));
  }
  return vocab;
}

std::optional<AddedVocabulary> AddedVocabulary::from_plain_json_text(std::string_view text) {
  AddedVocabulary vocab;
  try {
    JsonReader reader(text, "added_tokens");
    reader.expect('[');
    if (reader.consume(']'))
      return reader.at_end() ? std::optional(std::move(vocab)) : std::nullopt;
    std::string key, scratch;
    do {
      reader.expect('{');
      AddedToken token;
      enum Field { kId, kContent, kSpecial, kLstrip, kRstrip, kSingleWord, kNormalized };
      unsigned seen = 0;
      const auto read_bool = [&]() -> bool {
        const std::string_view value = reader.skip_value();
        if (value != "true" && value != "false") throw Error("not a boolean");
        return value == "true";
      };
      if (!reader.consume('}')) {
        do {
          reader.read_string(key);
          reader.expect(':');
          Field field;
          if (key == "id") {
            // Digits only, without leading zeros (as JSON requires), and in range.
            reader.peek();
            const size_t start = reader.position();
            const int64_t id = reader.read_integer();
            const size_t digits = reader.position() - start;
            if (id < 0 || id > INT32_MAX || (digits > 1 && text[start] == '0')) return std::nullopt;
            token.id = static_cast<int32_t>(id);
            field = kId;
          } else if (key == "content") {
            token.content = reader.read_string_view(scratch, /*validate_utf8=*/true);
            if (token.content.empty()) return std::nullopt;
            field = kContent;
          } else if (key == "special") {
            token.special = read_bool();
            field = kSpecial;
          } else if (key == "lstrip") {
            token.lstrip = read_bool();
            field = kLstrip;
          } else if (key == "rstrip") {
            token.rstrip = read_bool();
            field = kRstrip;
          } else if (key == "single_word") {
            token.single_word = read_bool();
            field = kSingleWord;
          } else if (key == "normalized") {
            token.normalized = read_bool();
            field = kNormalized;
          } else {
            return std::nullopt;
          }
          if (seen & (1u << field)) return std::nullopt;
          seen |= 1u << field;
        } while (reader.consume(','));
        reader.expect('}');
      }
      if (!(seen & (1u << kId)) || !(seen & (1u << kContent))) return std::nullopt;
      if (!(seen & (1u << kNormalized))) token.normalized = !token.special;
      vocab.add(std::move(token));
    } while (reader.consume(','));
    reader.expect(']');
    if (!reader.at_end()) return std::nullopt;
  } catch (const Error&) {
    return std::nullopt;
  }
  return vocab;
}

void AddedVocabulary::add(AddedToken token) {
  const int32_t index = static_cast<int32_t>(tokens_.size());
  id_limit_ = std::max<int64_t>(id_limit_, int64_t{token.id} + 1);
  by_id_[token.id] = index;
  (token.normalized ? normalized_trie_ : raw_trie_).insert(token.content, index);
  tokens_.push_back(std::move(token));
}

std::optional<int32_t> AddedVocabulary::find(std::string_view content) const {
  for (const Trie* trie : {&raw_trie_, &normalized_trie_}) {
    size_t length = 0;
    const int32_t index =
        trie->token_at_node.empty() ? -1 : trie->longest_match(content, 0, length);
    if (index >= 0 && length == content.size()) return tokens_[index].id;
  }
  return std::nullopt;
}

bool AddedVocabulary::accepts(const AddedToken& token, std::string_view text, size_t begin,
                              size_t end) const {
  if (!token.single_word) return true;
  const bool word_before =
      begin > 0 && is_word_character(text.substr(last_character_start(text.substr(0, begin))));
  const bool word_after = end < text.size() && is_word_character(text.substr(end));
  return !word_before && !word_after;
}

void AddedVocabulary::split(std::string_view text, bool normalized,
                            std::vector<TextSegment>& out) const {
  const Trie& trie = normalized ? normalized_trie_ : raw_trie_;
  size_t segment_start = 0;
  if (!trie.token_at_node.empty()) {
    for (size_t pos = 0; pos < text.size();) {
      if (!trie.first_byte[static_cast<unsigned char>(text[pos])]) {
        ++pos;
        continue;
      }
      size_t length = 0;
      const int32_t index = trie.longest_match(text, pos, length);
      if (index < 0) {
        ++pos;
        continue;
      }
      const AddedToken& token = tokens_[index];
      size_t begin = pos, end = pos + length;
      pos = end;
      if (!accepts(token, text, begin, end)) continue;
      if (token.lstrip) {
        while (begin > segment_start) {
          const size_t previous = last_character_start(text.substr(0, begin));
          size_t cursor = previous;
          if (!is_white_space(next_code_point(text, cursor))) break;
          begin = previous;
        }
      }
      if (token.rstrip) {
        while (end < text.size()) {
          size_t cursor = end;
          if (!is_white_space(next_code_point(text, cursor))) break;
          end = cursor;
        }
        pos = end;
      }
      if (begin > segment_start) out.push_back({segment_start, begin, -1});
      out.push_back({begin, end, token.id});
      segment_start = end;
    }
  }
  if (segment_start < text.size()) out.push_back({segment_start, text.size(), -1});
}

}  // namespace kiln::tok
