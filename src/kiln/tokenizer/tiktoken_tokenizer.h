// OpenAI tiktoken encodings: a `.tiktoken` rank file (base64 token bytes and rank per line)
// with its regex and special tokens, encoded by rank-ordered byte-pair merging.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/tokenizer/added_vocabulary.h"
#include "kiln/tokenizer/regex.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::tok {

class TiktokenTokenizer : public Tokenizer {
 public:
  // Reads `json_path` ({"pat_str": ..., "special_tokens": {...}, "rank_file": ...}) and the
  // rank file it names (relative to the json's folder; `rank_path` overrides it when not
  // empty). Throws Error naming the file and line or key at fault.
  static std::unique_ptr<TiktokenTokenizer> load(const std::string& json_path,
                                                 const std::string& rank_path);

  // add_special=false is tiktoken's encode_ordinary (special-token text is plain text);
  // add_special=true is encode(allowed_special="all").
  std::vector<int32_t> encode(std::string_view text, bool add_special) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  int64_t vocab_size() const override;
  std::optional<std::string> id_to_token(int32_t id) const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  bool is_special(int32_t id) const override;

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  TiktokenTokenizer(std::string pattern, const std::string& where);
  // Appends the ranks of one regex piece.
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;
  void encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const;

  Regex regex_;
  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> ranks_;  // bytes -> rank
  std::vector<std::string> tokens_;  // [ranks] bytes of each rank
  AddedVocabulary specials_;
};

}  // namespace kiln::tok
