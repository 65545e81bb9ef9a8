// The model step of a tokenizer: turns one pre-token into ids (BPE, Unigram, WordPiece), and
// owns the base vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/json_fields.h"
#include "kiln/tokenizer/model_tables.h"

namespace kiln::tok {

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of `word` (one non-empty pre-token, valid UTF-8) to `ids`. Thread-safe.
  virtual void tokenize(std::string_view word, std::vector<int32_t>& ids) const = 0;
  // One past the largest id of the model's vocabulary.
  virtual int64_t vocab_size() const = 0;
  // The vocabulary string of `id`, or nullopt when the model has no such id.
  virtual std::optional<std::string_view> token_of(int32_t id) const = 0;
  virtual std::optional<int32_t> id_of(std::string_view token) const = 0;
};

// Builds the model described by tokenizer.json's "model" object (its big members possibly
// already in `tables`). Throws Error naming `where` for unknown types or malformed vocabularies.
std::unique_ptr<Model> make_model(const Json& spec, const ModelTables& tables,
                                  const std::string& where);

}  // namespace kiln::tok
