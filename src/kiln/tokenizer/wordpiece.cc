#include "kiln/tokenizer/wordpiece.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {

std::unique_ptr<WordPieceModel> WordPieceModel::from_json(const Json& spec,
                                                          const ModelTables& tables,
                                                          const std::string& where) {
  std::unique_ptr<WordPieceModel> model(new WordPieceModel());
  model->vocab_ = Vocabulary::from_json_text(tables.vocab, child_where(where, "vocab"));
  const std::string unk = string_field_or(spec, "unk_token", where, "[UNK]");
  const auto unk_id = model->vocab_.find(unk);
  if (!unk_id) {
    throw Error(child_where(where, "unk_token") + ": '" + unk + "' is not in the vocabulary");
  }
  model->unk_id_ = *unk_id;
  model->prefix_ = string_field_or(spec, "continuing_subword_prefix", where, "##");
  if (has_field(spec, "max_input_chars_per_word")) {
    const int64_t limit = int_field(spec, "max_input_chars_per_word", where);
    if (limit < 0) throw Error(child_where(where, "max_input_chars_per_word") + ": negative");
    model->max_input_chars_per_word_ = static_cast<size_t>(limit);
  }
  return model;
}

void WordPieceModel::tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  size_t characters = 0;
  for (size_t pos = 0; pos < word.size(); ++characters) {
    pos += utf8_sequence_length(static_cast<unsigned char>(word[pos]));
  }
  if (characters > max_input_chars_per_word_) {
    ids.push_back(unk_id_);
    return;
  }
  const size_t first = ids.size();
  std::string candidate;
  for (size_t start = 0; start < word.size();) {
    // Longest piece word[start, end) in the vocabulary, shrinking one character at a time.
    int32_t found = -1;
    size_t end = word.size();
    while (end > start) {
      candidate.assign(start > 0 ? prefix_ : "");
      candidate.append(word.substr(start, end - start));
      if (const auto id = vocab_.find(candidate)) {
        found = *id;
        break;
      }
      do --end;
      while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
    }
    if (found < 0) {
      ids.resize(first);
      ids.push_back(unk_id_);
      return;
    }
    ids.push_back(found);
    start = end;
  }
}

}  // namespace kiln::tok
