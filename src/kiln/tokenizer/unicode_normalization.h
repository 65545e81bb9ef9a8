// Unicode normalization forms (NFC, NFD, NFKC, NFKD) and full lowercase mapping, over UTF-8,
// for the tokenizer normalizers.
#pragma once

#include <string>
#include <string_view>

namespace kiln::tok {

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };

// `text` (valid UTF-8) in normal form `form`.
std::string normalize_unicode(std::string_view text, NormalForm form);

// Full Unicode lowercase of valid UTF-8 `text` (as Rust's str::to_lowercase, including the
// word-final sigma).
std::string to_lowercase(std::string_view text);

}  // namespace kiln::tok
