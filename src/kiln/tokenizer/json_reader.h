// A small, fast pull reader for JSON text. Kiln reads the big members of tokenizer files with
// it (vocabularies and merge lists with hundreds of thousands of entries), and leaves the
// small members to nlohmann::json.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::tok {

class JsonReader {
 public:
  // Reads `text`; `where` names it in errors ("<where>: malformed JSON at byte N: ...").
  JsonReader(std::string_view text, std::string where) : text_(text), where_(std::move(where)) {}

  // The next non-white-space character (not consumed), or '\0' at the end.
  char peek();
  // Consumes `c` (after white space) and returns true, or returns false.
  bool consume(char c);
  // Consumes `c` (after white space) or throws.
  void expect(char c);
  // Reads a string value into `out` (escapes decoded, UTF-8 validated).
  void read_string(std::string& out);
  // Reads a string value: a view of the text when it has no escapes, else its decoded bytes
  // in `scratch` (the view is valid until `scratch` changes). Checks UTF-8 when
  // `validate_utf8`, or when the string has escapes.
  std::string_view read_string_view(std::string& scratch, bool validate_utf8);
  // Reads an integer value.
  int64_t read_integer();
  // Skips one value (validating its structure) and returns its text.
  std::string_view skip_value();
  // True when only white space is left.
  bool at_end();
  size_t position() const { return pos_; }

  [[noreturn]] void fail(const std::string& message) const;

 private:
  void skip_whitespace();
  // The position of the first '"', '\\' or control character at or after pos_, or the end.
  size_t plain_run_end() const;
  void skip_string();
  void skip_number();
  void skip_literal(std::string_view literal);
  uint32_t read_hex4();

  std::string_view text_;
  std::string where_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace kiln::tok
