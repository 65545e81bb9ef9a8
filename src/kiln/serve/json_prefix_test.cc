// JsonPrefix accepts exactly the prefixes of one JSON object (then whitespace), byte by byte,
// and refuses a byte without changing its state.
#include "kiln/serve/json_prefix.h"

#include <gtest/gtest.h>

#include <string>

namespace kiln::serve {
namespace {

// Feeds `text` one byte at a time; returns how many bytes were accepted.
size_t accepted(const std::string& text, JsonPrefix& json) {
  for (size_t i = 0; i < text.size(); ++i)
    if (!json.feed(text.substr(i, 1))) return i;
  return text.size();
}

TEST(JsonPrefix, AcceptsObjectsAndTheirPrefixes) {
  for (const std::string doc :
       {R"({})", R"({ "a" :
 1 })",
        R"({"a":[1,-2.5e+3,0,0.25,true,false,null,"x\"\\\u00e9\n"]})",
        R"({"nested": {"deep": [[], {}, [{"k": "v"}]]}, "n": -0})", "{\"utf8\": \"h\xc3\xa9\"}"}) {
    JsonPrefix json;
    EXPECT_EQ(accepted(doc, json), doc.size()) << doc;
    EXPECT_TRUE(json.complete()) << doc;
  }
  JsonPrefix partial;
  EXPECT_TRUE(partial.feed(R"({"key": [1, 2, {"x": tr)"));
  EXPECT_FALSE(partial.complete());
}

TEST(JsonPrefix, RefusesTheFirstByteThatBreaksIt) {
  const std::pair<std::string, size_t> cases[] = {
      {"[1]", 0},                              // the reply is an object
      {"x", 0},                                //
      {" {}", 0},                              // the reply starts with its brace
      {"{" + std::string(40, ' ') + "}", 33},  // at most 32 blank bytes in a row
      {"{a", 1},                               // keys are strings
      {R"({"a" 1})", 5},                       // colon missing
      {R"({"a": 01})", 7},                     // leading zero
      {R"({"a": 1.})", 8},                     // digits after the point
      {R"({"a": tru})", 9},                    // unfinished literal
      {R"({"a": 1,})", 8},                     // trailing comma
      {R"({"a": "\q"})", 8},                   // bad escape
      {"{\"a\": \"\n\"}", 7},                  // raw control character in a string
      {R"({} {})", 2},                         // one object only
      {R"({"a": [1}])", 8},                    // mismatched close
  };
  for (const auto& [text, at] : cases) {
    JsonPrefix json;
    EXPECT_EQ(accepted(text, json), at) << text;
    // A refused byte leaves the state as it was: the rest can still be fed correctly.
  }
  JsonPrefix json;
  ASSERT_TRUE(json.feed(R"({"a": )"));
  EXPECT_FALSE(json.feed("]"));
  EXPECT_TRUE(json.feed("1}"));
  EXPECT_TRUE(json.complete());
  EXPECT_FALSE(json.feed(" "));  // nothing follows the object
  EXPECT_FALSE(json.feed("x"));
}

}  // namespace
}  // namespace kiln::serve
