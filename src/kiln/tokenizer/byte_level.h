// GPT-2's byte-level alphabet: every byte is shown as a printable character, so that BPE
// vocabularies over bytes can be stored as text (space is 'Ġ', newline 'Ċ').
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace kiln::tok {

// UTF-8 of the character that stands for each byte.
const std::array<std::string, 256>& byte_level_chars();

// Appends the byte-level characters of every byte of `bytes` to `out`.
void append_byte_level(std::string& out, std::string_view bytes);

// The byte that code point `cp` stands for, or -1 when `cp` is not in the alphabet.
int byte_level_byte(char32_t cp);

}  // namespace kiln::tok
