// Operators, filters, tests and the methods of str, dict and list for the Jinja renderer.
// They throw Failure; the renderer adds the line.
#pragma once

#include <string>

#include "kiln/chat/jinja_internal.h"

namespace kiln::jinja {

// What builtins need from the renderer.
class Context {
 public:
  virtual ~Context() = default;
  virtual Value call(const Value& callee, Args& args) = 0;
  // Fails when a string of `bytes` would exceed the output limit.
  virtual void check_size(size_t bytes) const = 0;
};

// The items of a for loop or of list(): list items, dict keys, string characters; undefined
// is empty.
std::vector<Value> iterate(const Value& v);
// obj.name: methods of str/dict/list, then dict keys and attributes.
Value get_attr(Context& ctx, const Value& object, const std::string& name);
// obj[key]: dict keys, list and str indices (negative from the end), then attributes.
Value get_item(Context& ctx, const Value& object, const Value& key);
// obj[start:stop:step] of a list or str (none parts are absent).
Value slice(const Value& object, const Value& start, const Value& stop, const Value& step);
// + - * / // % ** ~ == != < <= > >= in, "not in".
Value binary_op(Context& ctx, const std::string& op, const Value& a, const Value& b);
Value apply_filter(Context& ctx, const std::string& name, Value input, Args& args);
bool apply_test(Context& ctx, const std::string& name, const Value& input, Args& args);

}  // namespace kiln::jinja
