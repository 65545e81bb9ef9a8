// Byte classes and the number grammar of JSON (RFC 8259), shared by the byte-level recognizers
// of json_prefix.h (any object) and json_schema.h (an object of a schema).
#pragma once

namespace kiln::serve::json_lex {

inline bool is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
inline bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
inline bool is_hex(unsigned char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// The state of a number being read: 0 after '-', 1 after '0', 2 in integer digits, 3 after '.',
// 4 in fraction digits, 5 after 'e', 6 after the exponent sign, 7 in exponent digits.
// number_start() is the state after its first byte ('-' or a digit).
inline int number_start(unsigned char c) {
  return c == '-' ? 0 : (c == '0' ? 1 : 2);
}

enum class NumberStep {
  kTaken,     // `c` continues the number
  kRejected,  // `c` cannot follow: the text would not be JSON
  kEnded,     // the number is complete and `c` is not part of it: read `c` after it
};
// Reads byte `c` of a number in `state` (updated when taken). `integer` refuses a fraction and
// an exponent (JSON Schema's "integer").
inline NumberStep number_step(int& state, unsigned char c, bool integer) {
  const int s = state;
  if (is_digit(c)) {
    if (s == 1) return NumberStep::kRejected;  // no leading zeros
    if (s == 0)
      state = c == '0' ? 1 : 2;
    else if (s == 3)
      state = 4;
    else if (s == 5 || s == 6)
      state = 7;
    return NumberStep::kTaken;
  }
  if (!integer && c == '.' && (s == 1 || s == 2)) {
    state = 3;
    return NumberStep::kTaken;
  }
  if (!integer && (c == 'e' || c == 'E') && (s == 1 || s == 2 || s == 4)) {
    state = 5;
    return NumberStep::kTaken;
  }
  if ((c == '+' || c == '-') && s == 5) {
    state = 6;
    return NumberStep::kTaken;
  }
  return s == 1 || s == 2 || s == 4 || s == 7 ? NumberStep::kEnded : NumberStep::kRejected;
}

}  // namespace kiln::serve::json_lex
