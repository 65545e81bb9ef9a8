// The Unigram model (SentencePiece-style, as in T5, ALBERT, XLM-R tokenizer.json files): the
// segmentation with the highest total log-probability (Viterbi), unknown runs fused into one
// unk token, optional byte fallback.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/tokenizer/model.h"
#include "kiln/tokenizer/model_tables.h"
#include "kiln/tokenizer/vocabulary.h"

namespace kiln::tok {

class UnigramModel : public Model {
 public:
  // Reads tokenizer.json's {"type": "Unigram", "unk_id": n, "byte_fallback": b} with the
  // vocab [[piece, score], ...] in `tables`. Throws Error naming `where`.
  static std::unique_ptr<UnigramModel> from_json(const Json& spec, const ModelTables& tables,
                                                 const std::string& where);

  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_.size(); }
  std::optional<std::string_view> token_of(int32_t id) const override { return vocab_.token(id); }
  std::optional<int32_t> id_of(std::string_view token) const override { return vocab_.find(token); }

 private:
  UnigramModel() = default;

  Vocabulary vocab_;
  std::vector<double> scores_;  // [vocab size] log-probability of each piece
  int32_t unk_id_ = -1;         // -1 when the model has no unk piece
  bool byte_fallback_ = false;
  double unk_score_ = 0;        // score of an unknown character: min score - 10
  size_t max_piece_bytes_ = 0;  // longest piece, bounds the lattice search
};

}  // namespace kiln::tok
