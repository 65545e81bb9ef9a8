// A token vocabulary: strings <-> dense ids, with lookups by string_view. Immutable once built.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/tokenizer/flat_hash.h"
#include "kiln/tokenizer/json_fields.h"
#include "kiln/tokenizer/zeroed_array.h"

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
  // Looks up `count` tokens into `ids` (-1 when absent); much faster than find() one by one
  // for large batches.
  void find_batch(const std::string_view* tokens, size_t count, int32_t* ids) const {
    ids_.find_batch(tokens, count, ids);
  }
  // The token of `id`, or nullopt.
  std::optional<std::string_view> token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= spans_.size()) return std::nullopt;
    const Span& span = spans_[id];
    if (span.length_plus_one == 0) return std::nullopt;
    return std::string_view(bytes_.data() + span.offset, span.length_plus_one - 1);
  }
  // One past the largest id.
  int64_t size() const { return static_cast<int64_t>(spans_.size()); }

 private:
  // Where a token lies in bytes_.
  struct Span {
    uint32_t offset;
    uint32_t length_plus_one;  // 0 when no token has this id
  };
  // A (token, id) pair read from the input, its token already in the arena.
  struct Entry {
    uint32_t offset;
    uint32_t length;
    int64_t id;
  };
  // Builds the vocabulary of `entries`, whose tokens lie in `bytes`; checks as from_entries.
  static Vocabulary build(ZeroedArray<char> bytes, const Entry* entries, size_t count,
                          const std::string& where);

  ZeroedArray<char> bytes_;  // the tokens' bytes, back to back (all heap-held, so the table's
                             // pointer into them survives moves of the Vocabulary)
  ZeroedArray<Span> spans_;  // [size()]
  StringIdTable ids_;        // token -> id over bytes_
};

}  // namespace kiln::tok
