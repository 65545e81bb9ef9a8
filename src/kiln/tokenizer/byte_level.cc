#include "kiln/tokenizer/byte_level.h"

#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

// Bytes that are printable Latin-1 keep their code point; the others get 256, 257, ... in
// byte order.
std::array<char32_t, 256> make_code_points() {
  std::array<char32_t, 256> code_points{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    code_points[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return code_points;
}

const std::array<char32_t, 256>& code_points() {
  static const std::array<char32_t, 256> table = make_code_points();
  return table;
}

}  // namespace

const std::array<std::string, 256>& byte_level_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> chars;
    for (int b = 0; b < 256; ++b) append_utf8(chars[b], code_points()[b]);
    return chars;
  }();
  return table;
}

void append_byte_level(std::string& out, std::string_view bytes) {
  const auto& chars = byte_level_chars();
  for (unsigned char b : bytes) out += chars[b];
}

int byte_level_byte(char32_t cp) {
  static const std::array<int, 512> inverse = [] {
    std::array<int, 512> table;
    table.fill(-1);
    for (int b = 0; b < 256; ++b) table[code_points()[b]] = b;
    return table;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

}  // namespace kiln::tok
