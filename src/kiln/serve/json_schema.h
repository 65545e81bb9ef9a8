// `response_format: {"type": "json_schema", ...}`: a subset of JSON Schema, and a byte-level
// recognizer of the prefixes of JSON texts that match a schema. Like JsonPrefix for
// json_object, the server lets the model pick only tokens after which the reply is still the
// start of a matching value, and ends the reply when the root object is complete.
//
// Supported: "type" one of object / array / string / number / integer / boolean / null;
// objects with "properties" and "required" (no other keys are generated:
// "additionalProperties" may only be false); arrays with "items"; "enum" (any JSON scalars);
// the annotations "title", "description", "$schema" and "strict" are ignored. The root must be
// an object. Any other keyword is refused (JsonSchema::parse names it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/io/json.h"

namespace kiln::serve {

class JsonSchema {
 public:
  enum class Kind : uint8_t { kObject, kArray, kString, kNumber, kInteger, kEnum };
  struct Node {
    Kind kind = Kind::kObject;
    std::vector<std::string> names;    // kObject: property names as written in JSON (escaped)
    std::vector<int> values;           // kObject: the node of each property
    std::vector<bool> required;        // kObject: per property
    int items = -1;                    // kArray: the node of the items
    std::vector<std::string> options;  // kEnum: the allowed values as compact JSON text
  };

  // The schema of `json` (a JSON Schema object). Throws Error naming the unsupported keywords
  // or the malformed part (with its JSON path).
  static std::shared_ptr<const JsonSchema> parse(const nlohmann::json& json);
  const Node& node(int index) const { return nodes_.at(static_cast<size_t>(index)); }

 private:
  int add(const nlohmann::json& json, const std::string& path);
  std::vector<Node> nodes_;  // node 0 is the root
};

// The prefixes of one JSON value matching a schema: no whitespace before the root object,
// whitespace runs between tokens of at most 32 bytes, nothing after the root object closes.
class JsonSchemaPrefix {
 public:
  explicit JsonSchemaPrefix(std::shared_ptr<const JsonSchema> schema);
  // Feeds `text`; false (and the state unchanged) when some byte would leave the schema.
  bool feed(std::string_view text);
  // The root object has closed.
  bool complete() const { return done_; }

 private:
  enum class State : uint8_t {
    kObjectOpen,   // after '{': a key or '}'
    kKey,          // after ',' in an object: a key
    kInKey,        // inside a key (text_ holds its bytes so far)
    kColon,        // after a key
    kMember,       // after ':': the member's value
    kAfterMember,  // after a member: ',' or '}'
    kArrayOpen,    // after '[': an item or ']'
    kItem,         // after ',' in an array: an item
    kAfterItem,    // after an item: ',' or ']'
    kString,       // inside a string value
    kEscape,       // after a backslash in a string value
    kUnicode,      // inside \uXXXX (hex_left digits to go)
    kNumber,       // inside a number (number holds its state)
    kEnum,         // inside an enum value (text_ holds its bytes so far)
  };
  struct Frame {
    int node = 0;
    State state = State::kObjectOpen;
    std::vector<bool> seen;  // objects: the properties written so far
    int member = -1;         // objects: the property being written
    std::string text;        // kInKey / kEnum: the bytes so far
    int hex_left = 0;
    int number = 0;  // the number's state (json_lex.h)
  };
  bool step(unsigned char c);
  // Starts a value of `node` with byte `c` on a new frame.
  bool start_value(int node, unsigned char c);
  // The top frame's value ended: pops it and moves its parent on.
  void value_done();
  // Whitespace between tokens (capped runs).
  bool blank(unsigned char c);

  std::shared_ptr<const JsonSchema> schema_;
  std::vector<Frame> stack_;
  int blanks_ = 0;
  bool done_ = false;
};

}  // namespace kiln::serve
