#include "kiln/serve/json_prefix.h"

#include "kiln/serve/json_lex.h"

namespace kiln::serve {

using json_lex::is_digit;
using json_lex::is_hex;
using json_lex::is_space;

bool JsonPrefix::feed(std::string_view text) {
  const JsonPrefix saved = *this;
  for (unsigned char c : text)
    if (!step(c)) {
      *this = saved;
      return false;
    }
  return true;
}

void JsonPrefix::value_done() {
  if (stack_.empty()) {
    done_ = true;
    return;
  }
  mode_ = Mode::kCommaOrEnd;
}

bool JsonPrefix::step(unsigned char c) {
  if (done_) return false;  // nothing after the object
  switch (mode_) {
    case Mode::kString:
      if (c == '"') {
        if (string_is_key_) {
          mode_ = Mode::kColon;
        } else {
          value_done();
        }
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      return c >= 0x20;  // control characters must be escaped
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kUnicode;
        hex_left_ = 4;
        return true;
      }
      mode_ = Mode::kString;
      return c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
             c == 't';
    case Mode::kUnicode:
      if (!is_hex(c)) return false;
      if (--hex_left_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kLiteral:
      if (c != static_cast<unsigned char>(*literal_)) return false;
      if (*++literal_ == '\0') value_done();
      return true;
    case Mode::kNumber: {
      switch (json_lex::number_step(number_, c, false)) {
        case json_lex::NumberStep::kTaken:
          return true;
        case json_lex::NumberStep::kRejected:
          return false;
        case json_lex::NumberStep::kEnded:
          break;
      }
      // The number is complete; the byte is read after it.
      value_done();
      return step(c);
    }
    default:
      break;
  }
  if (is_space(c)) {
    if (!started_ || blanks_ >= 32) return false;
    ++blanks_;
    return true;
  }
  blanks_ = 0;
  switch (mode_) {
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kKeyOrEnd:
    case Mode::kKey:
      if (c == '}' && mode_ == Mode::kKeyOrEnd) {
        stack_.pop_back();
        value_done();
        return true;
      }
      if (c != '"') return false;
      mode_ = Mode::kString;
      string_is_key_ = true;
      return true;
    case Mode::kCommaOrEnd: {
      const char open = stack_.back();
      if (c == ',') {
        mode_ = open == '{' ? Mode::kKey : Mode::kValue;
        return true;
      }
      if ((open == '{' && c == '}') || (open == '[' && c == ']')) {
        stack_.pop_back();
        value_done();
        return true;
      }
      return false;
    }
    case Mode::kValueOrEnd:
      if (c == ']') {
        stack_.pop_back();
        value_done();
        return true;
      }
      [[fallthrough]];
    case Mode::kValue:
      if (!started_) {  // the reply is one object
        if (c != '{') return false;
        started_ = true;
      }
      if (stack_.size() >= 256) return false;  // bounded nesting
      if (c == '{') {
        stack_.push_back('{');
        mode_ = Mode::kKeyOrEnd;
        return true;
      }
      if (c == '[') {
        stack_.push_back('[');
        mode_ = Mode::kValueOrEnd;
        return true;
      }
      if (c == '"') {
        mode_ = Mode::kString;
        string_is_key_ = false;
        return true;
      }
      if (c == '-' || is_digit(c)) {
        mode_ = Mode::kNumber;
        number_ = json_lex::number_start(c);
        return true;
      }
      if (c == 't' || c == 'f' || c == 'n') {
        literal_ = c == 't' ? "rue" : c == 'f' ? "alse" : "ull";
        mode_ = Mode::kLiteral;
        return true;
      }
      return false;
    default:
      return false;
  }
}

}  // namespace kiln::serve
