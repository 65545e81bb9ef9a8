// UTF-8 helpers for the tokenizers: validation with byte positions, lossy decoding that
// matches Rust's String::from_utf8_lossy, and code point encoding/decoding.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kiln::tok {

// Number of bytes of the UTF-8 sequence that starts with `lead` (1 for ASCII and for stray
// continuation bytes, so that loops always advance).
inline size_t utf8_sequence_length(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Length in bytes of the longest valid UTF-8 prefix of `bytes`, starting at `pos`; returns
// bytes.size() when everything from `pos` on is valid.
size_t utf8_valid_prefix(std::string_view bytes, size_t pos = 0);

// Throws Error("<what>: invalid UTF-8 at byte N") when `text` is not valid UTF-8.
void check_utf8(std::string_view text, std::string_view what);

// Decodes `bytes`, replacing each maximal invalid subsequence with U+FFFD exactly as Rust's
// String::from_utf8_lossy does (which is what HF tokenizers returns).
std::string utf8_lossy(std::string_view bytes);

// Decodes the code point at `pos` of valid UTF-8 `text` and advances `pos` past it.
char32_t next_code_point(std::string_view text, size_t& pos);

// Appends the UTF-8 encoding of `cp` to `out`.
void append_utf8(std::string& out, char32_t cp);

// True when `text` ends with U+FFFD (the marker of an incomplete sequence after lossy decoding).
bool ends_with_replacement_char(std::string_view text);

}  // namespace kiln::tok
