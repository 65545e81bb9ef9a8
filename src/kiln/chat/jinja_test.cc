// The Jinja engine against jinja2: every case of tests/data/chat_templates/jinja_cases.json
// (small templates rendered by jinja2 in transformers' environment, by
// make_jinja_cases.py), then error messages, line numbers and limits.
#include "kiln/chat/jinja.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "test_util.h"

namespace kiln::jinja {
namespace {

using OrderedJson = nlohmann::ordered_json;

std::string render(const std::string& source, const OrderedJson& context = OrderedJson::object()) {
  return Template(source, "t.jinja").render(context);
}

// The message of the TemplateError that rendering `source` throws ("" when none is thrown).
std::string error_of(const std::string& source, const OrderedJson& context = OrderedJson::object(),
                     const RenderLimits& limits = {}) {
  try {
    Template(source, "t.jinja").render(context, limits);
  } catch (const TemplateError& e) {
    return e.what();
  }
  return "";
}

TEST(Jinja, MatchesJinja2OnEveryCase) {
  std::ifstream in(test::data_path("chat_templates/jinja_cases.json"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const OrderedJson cases = OrderedJson::parse(buffer.str())["cases"];
  ASSERT_GT(cases.size(), 100u);
  int failures = 0;
  for (const OrderedJson& c : cases) {
    const std::string name = c["name"];
    const std::string source = c["template"];
    if (c.contains("expected")) {
      const std::string want = c["expected"];
      try {
        const std::string got = Template(source, name).render(c["context"]);
        if (got != want) {
          ++failures;
          ADD_FAILURE() << name << ": template " << OrderedJson(source).dump() << "\n  want "
                        << OrderedJson(want).dump() << "\n  got  " << OrderedJson(got).dump();
        }
      } catch (const Error& e) {
        ++failures;
        ADD_FAILURE() << name << ": threw " << e.what();
      }
    } else {
      // jinja2 raised: Kiln must raise too (a TemplateError, or RaisedError for
      // raise_exception), never render.
      bool threw = false;
      try {
        Template(source, name).render(c["context"]);
      } catch (const Error&) {
        threw = true;
      }
      if (!threw) {
        ++failures;
        ADD_FAILURE() << name << ": rendered, but jinja2 raised " << c["error"];
      }
    }
  }
  std::cout << cases.size() << " jinja2 cases, " << failures << " mismatches\n";
}

TEST(Jinja, SyntaxErrorsNameTheLine) {
  EXPECT_EQ(error_of("line 1\n{% if x %}\nline 3\n{{ 1 + }}"),
            "t.jinja:4: unexpected end of print statement");
  EXPECT_EQ(error_of("a\n\n{% if true %}x"),
            "t.jinja:3: unexpected end of template: tag 'if' opened on line 3 needs 'elif' or "
            "'else' or 'endif'");
  EXPECT_EQ(error_of("\n{% frobnicate %}"), "t.jinja:2: unknown tag 'frobnicate'");
  EXPECT_EQ(error_of("{% endfor %}"), "t.jinja:1: unexpected 'endfor' (no open block it can end)");
  EXPECT_EQ(error_of("{{ 'abc }}"), "t.jinja:1: unterminated string literal");
  EXPECT_EQ(error_of("x\n{{ 1"), "t.jinja:2: tag not closed ('}}' missing)");
  EXPECT_EQ(error_of("{% break %}"), "t.jinja:1: 'break' outside of a loop");
  EXPECT_EQ(error_of("{# open"), "t.jinja:1: comment not closed ('#}' missing)");
}

TEST(Jinja, UnknownFilterAndTestAreErrorsBeforeRendering) {
  // Like jinja2, when the template is compiled, even in a branch that never runs.
  EXPECT_EQ(error_of("a\n{% if false %}{{ x|nosuch }}{% endif %}"),
            "t.jinja:2: no filter named 'nosuch'");
  EXPECT_EQ(error_of("{{ x is nosuch }}"), "t.jinja:1: no test named 'nosuch'");
}

TEST(Jinja, RenderErrorsNameTheLine) {
  EXPECT_EQ(error_of("ok\n{{ nothing.attr }}"), "t.jinja:2: 'nothing' is undefined");
  EXPECT_EQ(error_of("{% set d = {} %}\n\n{{ d.x.y }}"),
            "t.jinja:3: 'dict object' has no attribute 'x'");
  EXPECT_EQ(error_of("\n{{ 'a' + 1 }}"),
            "t.jinja:2: unsupported operand type(s) for +: 'str' and 'int'");
  EXPECT_EQ(error_of("{{ 1 // 0 }}"), "t.jinja:1: integer division or modulo by zero");
  EXPECT_EQ(error_of("{{ nothing|tojson }}"),
            "t.jinja:1: Object of type Undefined is not JSON serializable");
  EXPECT_EQ(error_of("{% macro m() %}\n{{ 1 / 0 }}\n{% endmacro %}\n{{ m() }}"),
            "t.jinja:2: division by zero");
}

TEST(Jinja, RaiseExceptionIsADistinctError) {
  const std::string source =
      "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
      "{{ raise_exception('Unknown role: ' + m.role) }}{% endif %}{% endfor %}";
  const OrderedJson context = {{"messages", {{{"role", "user"}}, {{"role", "robot"}}}}};
  try {
    Template(source, "chat.jinja").render(context);
    FAIL() << "no exception";
  } catch (const RaisedError& e) {
    EXPECT_EQ(e.message(), "Unknown role: robot");
    EXPECT_STREQ(e.what(), "chat.jinja: template raised: Unknown role: robot");
  }
}

TEST(Jinja, RecursionAndOutputAreBounded) {
  const std::string forever = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
  EXPECT_EQ(error_of(forever), "t.jinja:1: macro calls nested deeper than 256");
  RenderLimits small;
  small.max_output_bytes = 1000;
  EXPECT_EQ(error_of("{% for i in range(2000) %}x{% endfor %}", {}, small),
            "t.jinja:1: output larger than the limit of 1000 bytes");
  EXPECT_EQ(error_of("{{ 'ab' * 1000 }}", {}, small),
            "t.jinja:1: output larger than the limit of 1000 bytes");
  // Deeply nested syntax is refused by the parser, not by a stack overflow.
  EXPECT_EQ(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"),
            "t.jinja:1: template nested too deeply");
  EXPECT_EQ(error_of(std::string(5000, '-') + "{{ " +
                     [] {
                       std::string s;
                       for (int k = 0; k < 3000; ++k) s += "not ";
                       return s;
                     }() +
                     "1 }}"),
            "t.jinja:1: template nested too deeply");
  std::string nested_ifs;
  for (int k = 0; k < 1000; ++k) nested_ifs += "{% if true %}";
  EXPECT_EQ(error_of(nested_ifs), "t.jinja:1: template nested too deeply");
}

TEST(Jinja, PathologicalTemplatesFailCleanly) {
  // A macro recursing through a deeply nested expression: bounded by the evaluation nesting.
  std::string open, close;
  for (int k = 0; k < 60; ++k) open += "1 + (", close += ")";
  EXPECT_EQ(
      error_of("{% macro f(n) %}{{ " + open + "f(n + 1)" + close + " }}{% endmacro %}{{ f(0) }}"),
      "t.jinja:1: evaluation nested deeper than 1000 levels");
  // Lists that contain each other.
  EXPECT_EQ(error_of("{% set a = [] %}{% set b = [a] %}{% set _ = a.append(b) %}{{ a }}"),
            "t.jinja:1: values nested deeper than 512 levels");
  EXPECT_EQ(error_of("{% set a = [] %}{% set _ = a.append(a) %}"),
            "t.jinja:1: cannot append a list to itself");
  RenderLimits few_steps;
  few_steps.max_steps = 10000;
  EXPECT_EQ(error_of("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
                     {}, few_steps),
            "t.jinja:1: more than 10000 evaluation steps");
  EXPECT_EQ(error_of("{{ -(-9223372036854775807 - 1) }}"), "t.jinja:1: integer overflow");
  EXPECT_EQ(error_of("{{ 9223372036854775807 + 1 }}"), "t.jinja:1: integer overflow");
  EXPECT_EQ(error_of("{{ 'x' * 9223372036854775807 }}"),
            "t.jinja:1: output larger than the limit of 67108864 bytes");
  EXPECT_EQ(error_of("{{ '%99999d' % 1 }}"), "t.jinja:1: format width or precision too large");
  EXPECT_EQ(error_of("{{ 'a'|indent(9223372036854775807) }}"),
            "t.jinja:1: output larger than the limit of 67108864 bytes");
  EXPECT_EQ(render("{{ [1, 2, 3][::9223372036854775807] }}{{ range(0, 9223372036854775807, "
                   "9223372036854775806)|list }}"),
            "[1][0, 9223372036854775806]");
  // Deeply nested JSON input is refused, not a stack overflow.
  std::string deep;
  for (int k = 0; k < 2000; ++k) deep += "[";
  for (int k = 0; k < 2000; ++k) deep += "]";
  EXPECT_EQ(error_of("{{ x }}", {{"x", OrderedJson::parse(deep)}}),
            "t.jinja:1: values nested deeper than 512 levels");
}

TEST(Jinja, InvalidUtf8IsKeptByteForByte) {
  // Python would hold such bytes as surrogate escapes; Kiln keeps them, never reads past them.
  EXPECT_EQ(render("{{ x.lower() }}|{{ x|length }}|{{ x[1:] }}|{{ x|tojson(true) }}",
                   {{"x", std::string("A\xff\xe2\x82\xAC"
                                      "B\xe2")}}),
            "a\xff\xe2\x82\xAC"
            "b\xe2|5|\xff\xe2\x82\xAC"
            "B\xe2|\"A\\udcff\\u20acB\\udce2\"");
}

TEST(Jinja, ContextKeepsKeyOrderAndNumberKinds) {
  const OrderedJson context = OrderedJson::parse(R"({"x": {"z": 1, "a": 2.0, "m": [1e20, -0.5]}})");
  EXPECT_EQ(render("{{ x|tojson }} {{ x }}", context),
            "{\"z\": 1, \"a\": 2.0, \"m\": [1e+20, -0.5]} {'z': 1, 'a': 2.0, 'm': [1e+20, -0.5]}");
}

TEST(Jinja, ListAppendWorks) {
  // transformers' sandbox refuses list.append; Kiln allows it (templates never rely on the
  // refusal).
  EXPECT_EQ(render("{% set l = [] %}{{ l.append(1) }}{{ l.append('a') }}{{ l }}"),
            "NoneNone[1, 'a']");
}

TEST(Jinja, StrftimeNow) {
  const std::string year = render("{{ strftime_now('%Y') }}");
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
  EXPECT_EQ(render("{{ strftime_now('%%') }}"), "%");
}

}  // namespace
}  // namespace kiln::jinja
