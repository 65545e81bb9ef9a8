// Unicode regular expressions for pre-tokenizers and normalizers: PCRE2 (JIT) compiled from
// the Oniguruma / fancy-regex patterns stored in tokenizer.json and tiktoken files.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kiln::tok {

class Regex {
 public:
  // Compiles `pattern` for UTF-8 text with Unicode properties. `\s` and `\S` are rewritten to
  // Unicode White_Space (as Oniguruma and Rust define it; PCRE2's own \s lacks U+0085).
  // Throws Error("<where>: bad regex ...: <reason>") when the pattern does not compile.
  Regex(std::string_view pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the leftmost match in `text` starting at or after byte `from`. Returns false when
  // there is none; otherwise sets [match_begin, match_end). `text` must be valid UTF-8 and
  // `from` a character boundary. Thread-safe.
  bool find(std::string_view text, size_t from, size_t& match_begin, size_t& match_end) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_;  // pcre2_code_8*
};

}  // namespace kiln::tok
