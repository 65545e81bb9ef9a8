#include "kiln/tokenizer/json_reader.h"

#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kiln/core/error.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

constexpr int kMaxDepth = 512;

}  // namespace

void JsonReader::fail(const std::string& message) const {
  throw Error(where_ + ": malformed JSON at byte " + std::to_string(pos_) + ": " + message);
}

void JsonReader::skip_whitespace() {
  while (pos_ < text_.size()) {
    const char c = text_[pos_];
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') return;
    ++pos_;
  }
}

size_t JsonReader::plain_run_end() const {
  size_t run = pos_;
#if defined(__SSE2__)
  // 16 bytes at a time: a byte stops the run when it is '"', '\\' or at most 0x1F.
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i backslash = _mm_set1_epi8('\\');
  const __m128i control_max = _mm_set1_epi8(0x1F);
  while (run + 16 <= text_.size()) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(text_.data() + run));
    const __m128i stops =
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(bytes, quote), _mm_cmpeq_epi8(bytes, backslash)),
                     _mm_cmpeq_epi8(_mm_max_epu8(bytes, control_max), control_max));
    const int mask = _mm_movemask_epi8(stops);
    if (mask != 0) return run + static_cast<size_t>(__builtin_ctz(static_cast<unsigned>(mask)));
    run += 16;
  }
#endif
  while (run < text_.size()) {
    const unsigned char c = static_cast<unsigned char>(text_[run]);
    if (c == '"' || c == '\\' || c < 0x20) return run;
    ++run;
  }
  return run;
}

char JsonReader::peek() {
  skip_whitespace();
  return pos_ < text_.size() ? text_[pos_] : '\0';
}

bool JsonReader::consume(char c) {
  if (peek() != c || pos_ >= text_.size()) return false;
  ++pos_;
  return true;
}

void JsonReader::expect(char c) {
  if (!consume(c)) fail(std::string("expected '") + c + "'");
}

bool JsonReader::at_end() {
  skip_whitespace();
  return pos_ == text_.size();
}

uint32_t JsonReader::read_hex4() {
  if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
  uint32_t value = 0;
  for (int i = 0; i < 4; ++i) {
    const char c = text_[pos_++];
    value <<= 4;
    if (c >= '0' && c <= '9')
      value |= c - '0';
    else if (c >= 'a' && c <= 'f')
      value |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      value |= c - 'A' + 10;
    else
      fail("bad \\u escape");
  }
  return value;
}

void JsonReader::read_string(std::string& out) {
  expect('"');
  out.clear();
  const size_t start = pos_;
  while (true) {
    // Copy the run up to the next quote, backslash or control character.
    const size_t run = plain_run_end();
    out.append(text_.substr(pos_, run - pos_));
    pos_ = run;
    if (pos_ >= text_.size()) fail("unterminated string");
    const char c = text_[pos_++];
    if (c == '"') break;
    if (c != '\\') fail("control character in string");
    if (pos_ >= text_.size()) fail("unterminated string");
    const char escape = text_[pos_++];
    switch (escape) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        uint32_t cp = read_hex4();
        if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (pos_ + 2 > text_.size() || text_[pos_] != '\\' || text_[pos_ + 1] != 'u') {
            fail("high surrogate without a low surrogate");
          }
          pos_ += 2;
          const uint32_t low = read_hex4();
          if (low < 0xDC00 || low > 0xDFFF) fail("high surrogate without a low surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        append_utf8(out, cp);
        break;
      }
      default:
        fail("bad escape");
    }
  }
  if (utf8_valid_prefix(out) != out.size()) {
    pos_ = start;
    fail("invalid UTF-8 in string");
  }
}

std::string_view JsonReader::read_string_view(std::string& scratch, bool validate_utf8) {
  expect('"');
  const size_t start = pos_;
  const size_t end = plain_run_end();
  if (end < text_.size() && text_[end] == '"') {
    const std::string_view value = text_.substr(start, end - start);
    if (validate_utf8 && utf8_valid_prefix(value) != value.size()) fail("invalid UTF-8 in string");
    pos_ = end + 1;
    return value;
  }
  // Escapes (or an error): decode the general way.
  pos_ = start - 1;
  read_string(scratch);
  return scratch;
}

int64_t JsonReader::read_integer() {
  skip_whitespace();
  const size_t start = pos_;
  const bool negative = pos_ < text_.size() && text_[pos_] == '-';
  if (negative) ++pos_;
  int64_t value = 0;
  size_t digits = 0;
  while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
    if (value > (INT64_MAX - 9) / 10) fail("integer too large");
    value = value * 10 + (text_[pos_++] - '0');
    ++digits;
  }
  if (digits == 0) fail("expected an integer");
  if (pos_ < text_.size() && (text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
    pos_ = start;
    fail("expected an integer");
  }
  return negative ? -value : value;
}

void JsonReader::skip_string() {
  // Structure only: the reader or parser that later reads the value checks its contents.
  expect('"');
  while (true) {
    pos_ = plain_run_end();
    if (pos_ >= text_.size()) break;
    const char c = text_[pos_++];
    if (c == '"') return;
    if (c == '\\') ++pos_;
  }
  fail("unterminated string");
}

void JsonReader::skip_number() {
  const size_t start = pos_;
  if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
  while (pos_ < text_.size() && std::strchr("0123456789.eE+-", text_[pos_]) != nullptr &&
         text_[pos_] != '\0') {
    ++pos_;
  }
  if (pos_ == start) fail("expected a value");
}

void JsonReader::skip_literal(std::string_view literal) {
  if (text_.substr(pos_, literal.size()) != literal) fail("expected a value");
  pos_ += literal.size();
}

std::string_view JsonReader::skip_value() {
  const char c = peek();
  const size_t start = pos_;
  if (++depth_ > kMaxDepth) fail("nested too deeply");
  if (c == '{') {
    ++pos_;
    if (!consume('}')) {
      do {
        skip_string();
        expect(':');
        skip_value();
      } while (consume(','));
      expect('}');
    }
  } else if (c == '[') {
    ++pos_;
    if (!consume(']')) {
      do {
        skip_value();
      } while (consume(','));
      expect(']');
    }
  } else if (c == '"') {
    skip_string();
  } else if (c == 't') {
    skip_literal("true");
  } else if (c == 'f') {
    skip_literal("false");
  } else if (c == 'n') {
    skip_literal("null");
  } else {
    skip_number();
  }
  --depth_;
  return text_.substr(start, pos_ - start);
}

}  // namespace kiln::tok
