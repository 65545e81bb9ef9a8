// A Jinja2 engine for HuggingFace chat templates. It renders templates as transformers does:
// a jinja2 sandboxed Environment with trim_blocks and lstrip_blocks, the loopcontrols
// extension (break, continue), autoescape off, `tojson` as json.dumps(ensure_ascii=False)
// keeping key order, and the globals raise_exception(msg) and strftime_now(fmt).
// Values follow Python: truthiness, int vs float arithmetic, str() and repr() of values.
// Undefined follows jinja2's default Undefined: it prints as "", is false, iterates as empty,
// and raises when an attribute or item of it is taken.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "kiln/core/error.h"

namespace kiln::jinja {

// A broken template or a failure while rendering it (syntax error, unknown filter, type
// error, undefined value used): what() is "NAME:LINE: message".
class TemplateError : public Error {
 public:
  TemplateError(const std::string& name, int line, const std::string& message)
      : Error(name + ":" + std::to_string(line) + ": " + message), line_(line) {}
  int line() const { return line_; }

 private:
  int line_;
};

// The template called raise_exception(message): the input (the messages) is what the
// template refuses, so a server answers 400 with message(). what() also names the template.
class RaisedError : public Error {
 public:
  RaisedError(const std::string& name, const std::string& message)
      : Error(name + ": template raised: " + message), message_(message) {}
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

struct RenderLimits {
  size_t max_output_bytes = size_t{64} << 20;  // output and any string built while rendering
  int max_depth = 256;                         // nested macro calls
  int64_t max_steps = 20'000'000;              // statements and expressions evaluated
};

class Template {
 public:
  // Parses `source`; `name` names it in error messages. Throws TemplateError.
  explicit Template(std::string_view source, std::string name = "template");
  ~Template();
  Template(const Template&) = delete;
  Template& operator=(const Template&) = delete;

  // Renders with the variables of `context` (a JSON object; key order is kept, as Python's
  // json.loads keeps it). Variables absent from it are undefined. Throws TemplateError or
  // RaisedError.
  std::string render(const nlohmann::ordered_json& context, const RenderLimits& limits = {}) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::jinja
