// The WordPiece model (BERT): greedy longest-match-first over the vocabulary, non-initial
// pieces spelled with a prefix ("##"); a word that cannot be covered becomes the unk token.
#pragma once

#include <memory>
#include <string>

#include "kiln/tokenizer/model.h"
#include "kiln/tokenizer/model_tables.h"
#include "kiln/tokenizer/vocabulary.h"

namespace kiln::tok {

class WordPieceModel : public Model {
 public:
  // Reads tokenizer.json's {"type": "WordPiece", "unk_token", "continuing_subword_prefix",
  // "max_input_chars_per_word"} with the vocab object in `tables`. Throws Error naming `where`,
  // also when the unk token is not in the vocabulary.
  static std::unique_ptr<WordPieceModel> from_json(const Json& spec, const ModelTables& tables,
                                                   const std::string& where);

  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_.size(); }
  std::optional<std::string_view> token_of(int32_t id) const override { return vocab_.token(id); }
  std::optional<int32_t> id_of(std::string_view token) const override { return vocab_.find(token); }

 private:
  WordPieceModel() = default;

  Vocabulary vocab_;
  int32_t unk_id_ = 0;
  std::string prefix_;  // continuing_subword_prefix, e.g. "##"
  size_t max_input_chars_per_word_ = 100;
};

}  // namespace kiln::tok
