// The `pattern` of Split pre-tokenizers and Replace normalizers/decoders: a literal string
// ({"String": ...}) or a regular expression ({"Regex": ...}).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/json_fields.h"
#include "kiln/tokenizer/regex.h"

namespace kiln::tok {

// A byte range of a text and whether the pattern matched it.
struct PatternSpan {
  size_t begin;
  size_t end;
  bool is_match;
};

class Pattern {
 public:
  // Parses {"String": s} or {"Regex": r}. Throws Error naming `where` otherwise.
  static Pattern from_json(const Json& spec, const std::string& where);
  static Pattern literal(std::string text);
  static Pattern regex(std::string_view pattern, const std::string& where);

  // Cuts `text` into consecutive spans covering all of it: the non-overlapping leftmost
  // matches and the gaps between them (an empty text gives one empty non-match), as HF's
  // Pattern::find_matches does.
  void find_matches(std::string_view text, std::vector<PatternSpan>& spans) const;

  // Appends `text` to `out` with every match replaced by `replacement`.
  void replace_all(std::string_view text, std::string_view replacement, std::string& out) const;

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;  // null for a literal pattern
};

}  // namespace kiln::tok
