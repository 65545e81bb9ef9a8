// A token vocabulary: strings <-> dense ids, with lookups by string_view. Immutable once built.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/tokenizer/flat_hash.h"
#include "kiln/tokenizer/json_fields.h"

namespace kiln::tok {

class Vocabulary {
 public:
  Vocabulary() = default;
  Vocabulary(Vocabulary&&) = default;
  Vocabulary& operator=(Vocabulary&&) = default;

  // Builds a vocabulary from (token, id) pairs. Throws Error naming `where` for ids outside
  // [0, 2^31) and for a token or an id listed twice.
  static Vocabulary from_entries(std::vector<std::pair<std::string, int64_t>> entries,
                                 const std::string& where);
  // Reads the JSON object {"token": id, ...} in `text`.
  static Vocabulary from_json_text(std::string_view text, const std::string& where);

  std::optional<int32_t> find(std::string_view token) const {
    const int32_t id = ids_.find(token);
    if (id < 0) return std::nullopt;
    return id;
  }
  // The token of `id`, or nullptr.
  const std::string* token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= tokens_->size() || !present_[id]) return nullptr;
    return &(*tokens_)[id];
  }
  // One past the largest id.
  int64_t size() const { return static_cast<int64_t>(tokens_->size()); }

 private:
  // Heap-allocated so that the table's pointer to it survives moves of the Vocabulary.
  std::unique_ptr<std::vector<std::string>> tokens_ =
      std::make_unique<std::vector<std::string>>();  // [size()], "" where no token has the id
  std::vector<bool> present_;                        // [size()]
  StringIdTable ids_;                                // token -> id over *tokens_
};

}  // namespace kiln::tok
