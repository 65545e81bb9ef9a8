// The JSON Schema subset of response_format json_schema: parsing (unsupported keywords refused
// by name) and the byte-level recognizer of matching prefixes.
#include "kiln/serve/json_schema.h"

#include <gtest/gtest.h>

#include "kiln/core/error.h"

namespace kiln::serve {
namespace {

std::shared_ptr<const JsonSchema> person() {
  return JsonSchema::parse(nlohmann::json::parse(R"({
    "type": "object", "title": "person", "additionalProperties": false,
    "properties": {
      "name": {"type": "string", "description": "full name"},
      "age": {"type": "integer"},
      "height": {"type": "number"},
      "admin": {"type": "boolean"},
      "role": {"enum": ["user", "owner", 1, 12, null]},
      "tags": {"type": "array", "items": {"type": "string"}},
      "address": {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}
    },
    "required": ["name", "age"]
  })"));
}

// Feeds `text` byte by byte: true when every byte is accepted.
bool accepts(const std::shared_ptr<const JsonSchema>& schema, const std::string& text,
             bool* complete = nullptr) {
  JsonSchemaPrefix p(schema);
  for (char c : text)
    if (!p.feed(std::string_view(&c, 1))) return false;
  if (complete) *complete = p.complete();
  return true;
}

TEST(JsonSchema, AcceptsMatchingObjectsAndTheirPrefixes) {
  const auto schema = person();
  for (const std::string text :
       {R"({"name": "Ada \"L\" \u00e9", "age": 36})",
        R"({"age":-3,"name":"x","height":1.5e+3,"admin":false,"role":12})",
        R"({ "name" : "a" , "tags" : [ "x", "y" ] , "age" : 0, "role": null })",
        R"({"name": "a", "age": 1, "address": {"city": "Paris"}, "tags": []})",
        R"({"name": "a", "age": 1, "role": 1, "height": -0.25})"}) {
    bool complete = false;
    EXPECT_TRUE(accepts(schema, text, &complete)) << text;
    EXPECT_TRUE(complete) << text;
    EXPECT_FALSE(accepts(schema, text + " ")) << "nothing after the object: " << text;
  }
  bool complete = true;
  EXPECT_TRUE(accepts(schema, R"({"name": "a", "ag)", &complete));
  EXPECT_FALSE(complete);
}

TEST(JsonSchema, RefusesWhatLeavesTheSchema) {
  const auto schema = person();
  for (const std::string text : {
           R"( {"name": "a", "age": 1})",    // whitespace before the object
           R"({"nick": "a"})",               // not a property
           R"({"name": "a", "name": "b"})",  // a property twice
           R"({"name": "a"})",               // 'age' is required
           R"({"name": 1, "age": 1})",       // a number for a string
           R"({"name": "a", "age": 1.5})",   // a fraction for an integer
           R"({"name": "a", "age": 1e3})",   // an exponent for an integer
           R"({"name": "a", "age": 01})",    // a leading zero
           R"({"name": "a", "age": 1, "admin": "yes"})",
           R"({"name": "a", "age": 1, "role": "admin"})",  // not in the enum
           R"({"name": "a", "age": 1, "role": 2})", R"({"name": "a", "age": 1, "tags": [1]})",
           R"({"name": "a", "age": 1, "address": {}})",  // its 'city' is required
           R"({"name": "a\x", "age": 1})",               // a bad escape
           "{\"name\": \"a\nb\", \"age\": 1}",           // a raw control character
       }) {
    bool complete = false;
    const bool ok = accepts(schema, text, &complete);
    EXPECT_FALSE(ok && complete) << text;
  }
  // Whitespace between tokens comes in runs of at most 32 bytes.
  EXPECT_TRUE(accepts(schema, "{" + std::string(32, ' ') + "\"name\""));
  EXPECT_FALSE(accepts(schema, "{" + std::string(33, ' ') + "\"name\""));
  // A refused feed leaves the state as it was.
  JsonSchemaPrefix p(schema);
  EXPECT_TRUE(p.feed(R"({"name": "a", "age": 1)"));
  EXPECT_FALSE(p.feed(R"(, "age": 2})"));
  EXPECT_TRUE(p.feed("}"));
  EXPECT_TRUE(p.complete());
}

TEST(JsonSchema, RefusesUnsupportedKeywordsByName) {
  auto message = [](const std::string& schema) {
    try {
      JsonSchema::parse(nlohmann::json::parse(schema));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const std::string two = message(
      R"({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+", "minLength": 2}}})");
  EXPECT_NE(two.find("unsupported keywords 'minLength', 'pattern' in schema.properties.a"),
            std::string::npos)
      << two;
  EXPECT_NE(message(R"({"type": "object", "anyOf": []})").find("'anyOf'"), std::string::npos);
  EXPECT_NE(message(R"({"type": "array", "items": {"type": "string"}})").find("root"),
            std::string::npos);
  EXPECT_NE(message(R"({"type": ["string", "null"]})").find("needs 'type'"), std::string::npos);
  EXPECT_NE(message(R"({"type": "object", "required": ["b"]})").find("not in its properties"),
            std::string::npos);
  EXPECT_NE(message(R"({"type": "object", "additionalProperties": true})").find("must be false"),
            std::string::npos);
  EXPECT_NE(
      message(R"({"type": "object", "properties": {"a": {"type": "date"}}})").find("type 'date'"),
      std::string::npos);
  EXPECT_NE(message(R"({"type": "object", "properties": {"a": {"type": "array"}}})")
                .find("needs 'items'"),
            std::string::npos);
  EXPECT_EQ(message(R"({"type": "object", "$schema": "x", "strict": true})"), "accepted");
}

}  // namespace
}  // namespace kiln::serve
