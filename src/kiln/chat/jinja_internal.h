// The insides of the Jinja engine (jinja.h): values with Python semantics, the syntax tree,
// the parser and the renderer. Not for use outside src/kiln/chat/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/chat/jinja.h"

namespace kiln::jinja {

// A failure inside an operation; the renderer turns it into a TemplateError at the line of
// the node being evaluated.
struct Failure {
  std::string message;
};
[[noreturn]] inline void fail(std::string message) {
  throw Failure{std::move(message)};
}

struct Value;
struct ListData;
struct DictData;
struct Args;
using NativeFunction = std::function<Value(Args&)>;

struct Value {
  enum class Kind : uint8_t {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kFunction
  };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // kString: the text; kUndefined: the message raised when it is used
  std::shared_ptr<ListData> list;
  std::shared_ptr<DictData> dict;
  std::shared_ptr<NativeFunction> fn;

  static Value undefined(std::string message = "value is undefined");
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value make_list(std::vector<Value> items = {}, bool tuple = false);
  static Value make_dict();
  static Value function(NativeFunction fn);
  static Value from_json(const nlohmann::ordered_json& json);

  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_none() const { return kind == Kind::kNone; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_list() const { return kind == Kind::kList; }
  bool is_dict() const { return kind == Kind::kDict; }
  // int, float or bool (Python's numbers.Number includes bool).
  bool is_number() const {
    return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool;
  }
  bool is_integral() const { return kind == Kind::kInt || kind == Kind::kBool; }
  int64_t as_int() const { return kind == Kind::kBool ? b : i; }
  double as_double() const { return kind == Kind::kFloat ? f : double(as_int()); }
  bool truthy() const;
};

struct ListData {
  std::vector<Value> items;
  bool tuple = false;
  // The result of a lazy jinja2 filter (select, map, unique, items, ...), a Python
  // generator: always true, no len(), no index, not reversible, prints as a generator. Kiln
  // computes it eagerly (and, unlike Python, it can be iterated more than once).
  bool generator = false;
  std::string repr;            // how it prints when not a plain list (e.g. "range(0, 3)")
  std::string deferred_error;  // a generator whose body failed: raised when it is consumed
};

struct DictData {
  // kDict: a mapping; kNamespace: namespace(); kObject: an object with attributes (loop).
  enum class Flavor : uint8_t { kDict, kNamespace, kObject };
  Flavor flavor = Flavor::kDict;
  std::vector<std::pair<std::string, Value>> entries;  // insertion order, as Python's dict

  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value value);
};

struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
};

// Python's type name of a value ("str", "int", "list", "dict", ...).
std::string type_name(const Value& v);
// Python's str() and repr().
std::string to_str(const Value& v);
std::string to_repr(const Value& v);
// Python's float repr ("1.0", "1e+16", "0.1", "inf").
std::string float_repr(double v);
// json.dumps(v, ensure_ascii, indent, separators, sort_keys); indent < 0: none, and
// `indent_text` overrides the spaces when not empty.
struct JsonStyle {
  bool ensure_ascii = false;
  int indent = -1;
  std::string indent_text;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonStyle& style);
// Python ==.
bool equals(const Value& a, const Value& b);
// Python <, for numbers, strings and sequences; fails for other types.
bool less(const Value& a, const Value& b);

// UTF-8 text as code points and back (strings index, slice and count by code point).
std::u32string to_code_points(std::string_view text);
std::string from_code_points(std::u32string_view cps);

// The syntax tree.
struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct Expr {
  enum class Kind : uint8_t {
    kConst,   // value
    kName,    // name
    kList,    // args
    kTuple,   // args
    kDict,    // args: key, value, key, value, ...
    kAttr,    // args[0].name
    kItem,    // args[0][args[1]]
    kSlice,   // args[0][args[1]:args[2]:args[3]] (null parts absent)
    kCall,    // args[0](args[1..], keywords)
    kFilter,  // args[0] | name(args[1..], keywords); args[0] null in a filter block
    kTest,    // args[0] is [not] name(args[1..], keywords)
    kUnary,   // name ("-", "+", "not") args[0]
    kBinary,  // args[0] name args[1]: + - * / // % ** ~ == != < <= > >= in "not in"
    kAnd,
    kOr,
    kCond,     // args[0] if args[1] else args[2] (null: undefined)
    kCompare,  // args[0] ops[0] args[1] ops[1] args[2] ...: Python's chained comparison
  };
  Kind kind;
  int line;
  Value value;
  std::string name;
  bool negated = false;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> keywords;
  std::vector<std::string> ops;  // kCompare
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;
struct Node {
  enum class Kind : uint8_t {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches (cond null for else)
    kFor,       // for targets in expr [if cond]: body [else else_body]
    kSet,       // set targets = expr, or set targets[0].attr = expr
    kSetBlock,  // set targets[0] [| filter] %}body{% endset
    kMacro,     // macro name(params): body
    kBreak,
    kContinue,
    kFilterBlock,  // filter (expr: a filter chain over null) body
    kScope,        // a plain body ({% generation %})
  };
  Kind kind;
  int line;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;
  std::vector<std::string> targets;
  std::string attr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters, default or null
};

// Whether a filter or test of this name exists (the parser rejects unknown ones, as jinja2
// does when it compiles a template).
bool is_filter(const std::string& name);
bool is_test(const std::string& name);

// Parses a template (newlines normalized, one trailing newline dropped, as jinja2 does).
// Throws TemplateError.
Body parse_template(std::string_view source, const std::string& name);

struct Template::Impl {
  std::string name;
  Body body;
};

}  // namespace kiln::jinja
