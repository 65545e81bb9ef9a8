#include "kiln/tokenizer/vocabulary.h"

#include "kiln/core/error.h"
#include "kiln/tokenizer/json_reader.h"

namespace kiln::tok {

Vocabulary Vocabulary::from_entries(std::vector<std::pair<std::string, int64_t>> entries,
                                    const std::string& where) {
  Vocabulary vocab;
  int64_t limit = 0;
  for (const auto& [token, id] : entries) {
    if (id < 0 || id > INT32_MAX) {
      throw Error(child_where(where, "\"" + token + "\"") + ": id " + std::to_string(id) +
                  " is out of range");
    }
    limit = std::max(limit, id + 1);
  }
  if (limit > static_cast<int64_t>(entries.size()) * 4 + 1024) {
    throw Error(where + ": ids up to " + std::to_string(limit - 1) + " for only " +
                std::to_string(entries.size()) + " tokens");
  }
  std::vector<std::string>& tokens = *vocab.tokens_;
  tokens.resize(limit);
  vocab.present_.assign(limit, false);
  for (auto& [token, id] : entries) {
    if (vocab.present_[id]) {
      throw Error(child_where(where, "\"" + token + "\"") + ": id " + std::to_string(id) +
                  " is used twice");
    }
    vocab.present_[id] = true;
    tokens[id] = std::move(token);
  }
  const int32_t duplicate = vocab.ids_.build(&tokens, vocab.present_);
  if (duplicate >= 0) {
    throw Error(child_where(where, "\"" + tokens[duplicate] + "\"") + ": listed twice");
  }
  return vocab;
}

Vocabulary Vocabulary::from_json_text(std::string_view text, const std::string& where) {
  if (text.empty()) throw Error(where + ": missing");
  JsonReader reader(text, where);
  std::vector<std::pair<std::string, int64_t>> entries;
  reader.expect('{');
  if (!reader.consume('}')) {
    std::string token;
    do {
      reader.read_string(token);
      reader.expect(':');
      entries.emplace_back(token, reader.read_integer());
    } while (reader.consume(','));
    reader.expect('}');
  }
  return from_entries(std::move(entries), where);
}

}  // namespace kiln::tok
