// Added tokens of tokenizer.json ("added_tokens"): strings matched in the text before
// pre-tokenization (leftmost-longest, honouring lstrip, rstrip and single_word), special or not.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kiln/tokenizer/json_fields.h"

namespace kiln::tok {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;      // dropped by decode(skip_special=true)
  bool lstrip = false;       // a match swallows the whitespace before it
  bool rstrip = false;       // a match swallows the whitespace after it
  bool single_word = false;  // matches only when not inside a word
  bool normalized = false;   // matched in normalized text instead of the raw text
};

// One piece of a text cut at added tokens: the bytes [begin, end) and the added token's id,
// or id -1 for plain text.
struct TextSegment {
  size_t begin;
  size_t end;
  int32_t id;
};

class AddedVocabulary {
 public:
  // Reads tokenizer.json's "added_tokens" array. Throws Error naming `where` for malformed
  // entries.
  static AddedVocabulary from_json(const Json& list, const std::string& where);
  // Reads the JSON text of an "added_tokens" array without building a Json tree (big
  // tokenizers list thousands), when every entry is a plain valid token object: known keys
  // once each, an id in [0, 2^31), non-empty content, true/false flags. Returns nullopt for
  // anything else, so that from_json can name the fault.
  static std::optional<AddedVocabulary> from_plain_json_text(std::string_view text);

  // Adds a token; a later token with the same content replaces the earlier one in matching.
  void add(AddedToken token);

  // Cuts `text` at the added tokens whose `normalized` flag equals `normalized`; appends the
  // segments (non-empty, covering the text minus stripped whitespace) to `out`.
  void split(std::string_view text, bool normalized, std::vector<TextSegment>& out) const;

  const AddedToken* find(int32_t id) const {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &tokens_[it->second];
  }
  std::optional<int32_t> find(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }
  // One past the largest added id (0 when empty).
  int64_t id_limit() const { return id_limit_; }

 private:
  // A byte trie over the contents of one group of tokens; node 0 is the root.
  struct Trie {
    std::unordered_map<uint64_t, int32_t> edges;  // (node << 8 | byte) -> child node
    std::vector<int32_t> token_at_node;           // [nodes] index into tokens_, or -1
    bool first_byte[256] = {};
    void insert(std::string_view content, int32_t token_index);
    // Longest token starting at `pos` (index into tokens_ and its length), or -1.
    int32_t longest_match(std::string_view text, size_t pos, size_t& length) const;
  };
  bool accepts(const AddedToken& token, std::string_view text, size_t begin, size_t end) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;  // id -> index into tokens_
  Trie raw_trie_;
  Trie normalized_trie_;
  int64_t id_limit_ = 0;
};

}  // namespace kiln::tok
