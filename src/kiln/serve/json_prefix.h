// A byte-level recognizer of JSON prefixes, for `response_format: {"type": "json_object"}`:
// the server lets the model pick only tokens after which the text so far is still the start
// of one JSON object (RFC 8259), and ends the reply when the object is complete. The object
// starts the reply (no whitespace before it) and whitespace between tokens comes in runs of at
// most 32 bytes, so that a model cannot fill a reply with blanks.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace kiln::serve {

class JsonPrefix {
 public:
  // Feeds `text`; false (and the state unchanged) when some byte would make the text not a
  // prefix of one JSON object followed by whitespace.
  bool feed(std::string_view text);
  // The object has closed (only whitespace may follow).
  bool complete() const { return done_; }

 private:
  enum class Mode : uint8_t {
    kValue,       // a value is expected (after '[', ':' or at the start)
    kValueOrEnd,  // after '[': a value or ']'
    kKeyOrEnd,    // after '{': a key string or '}'
    kKey,         // after ',' in an object: a key string
    kColon,       // after a key
    kCommaOrEnd,  // after a value inside an object or array
    kString,      // inside a string (key or value)
    kEscape,      // after a backslash in a string
    kUnicode,     // inside \uXXXX (hex_left_ digits to go)
    kNumber,      // inside a number (number_ holds its state)
    kLiteral,     // inside true / false / null
  };
  bool step(unsigned char c);
  // The value that just ended (a string, number or literal): what may come next.
  void value_done();

  std::vector<char> stack_;  // '{' or '[' per open container
  Mode mode_ = Mode::kValue;
  bool string_is_key_ = false;
  int hex_left_ = 0;
  int number_ = 0;                 // the number's state (json_lex.h)
  const char* literal_ = nullptr;  // the rest of "true" / "false" / "null" to come
  bool started_ = false;           // the object's '{' was seen
  int blanks_ = 0;                 // whitespace bytes in a row outside strings
  bool done_ = false;
};

}  // namespace kiln::serve
