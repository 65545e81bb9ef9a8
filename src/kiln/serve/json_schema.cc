#include "kiln/serve/json_schema.h"

#include <algorithm>
#include <set>

#include "kiln/core/error.h"
#include "kiln/serve/json_lex.h"

namespace kiln::serve {

using json_lex::is_digit;
using json_lex::is_hex;
using json_lex::is_space;

namespace {
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
}  // namespace

std::shared_ptr<const JsonSchema> JsonSchema::parse(const nlohmann::json& json) {
  auto schema = std::make_shared<JsonSchema>();
  schema->add(json, "schema");
  check(schema->nodes_[0].kind == Kind::kObject,
        "json_schema: the root schema must be of type object");
  return schema;
}

int JsonSchema::add(const nlohmann::json& json, const std::string& path) {
  check(json.is_object(), "json_schema: " + path + " must be an object, got " + json.dump());
  static const std::set<std::string> known = {
      "type",  "properties",  "required", "items", "enum", "additionalProperties",
      "title", "description", "$schema",  "strict"};
  std::string unknown;
  for (const auto& [key, value] : json.items())
    if (!known.count(key)) unknown += (unknown.empty() ? "'" : ", '") + key + "'";
  check(unknown.empty(), "json_schema: unsupported keyword" +
                             std::string(unknown.find(',') != std::string::npos ? "s " : " ") +
                             unknown + " in " + path +
                             " (supported: type, properties, required, items, enum, "
                             "additionalProperties false)");
  const auto index = static_cast<int>(nodes_.size());
  nodes_.emplace_back();
  Node node;
  if (json.contains("enum")) {
    const nlohmann::json& options = json.at("enum");
    check(options.is_array() && !options.empty(),
          "json_schema: " + path + ".enum must be a non-empty array");
    node.kind = Kind::kEnum;
    for (const nlohmann::json& option : options) {
      check(option.is_primitive(), "json_schema: " + path + ".enum holds " + option.dump() +
                                       "; only scalars are supported");
      node.options.push_back(option.dump());
    }
    nodes_[static_cast<size_t>(index)] = std::move(node);
    return index;
  }
  check(json.contains("type") && json.at("type").is_string(),
        "json_schema: " + path +
            " needs 'type', one of object, array, string, number, integer, boolean, null");
  const std::string type = json.at("type").get<std::string>();
  if (type == "object") {
    node.kind = Kind::kObject;
    if (json.contains("additionalProperties"))
      check(json.at("additionalProperties") == false,
            "json_schema: " + path +
                ".additionalProperties must be false (other keys are never "
                "generated)");
    if (json.contains("properties")) {
      const nlohmann::json& properties = json.at("properties");
      check(properties.is_object(), "json_schema: " + path + ".properties must be an object");
      for (const auto& [name, sub] : properties.items()) {
        const std::string quoted = nlohmann::json(name).dump();
        node.names.push_back(quoted.substr(1, quoted.size() - 2));
        node.required.push_back(false);
        node.values.push_back(add(sub, path + ".properties." + name));
      }
    }
    if (json.contains("required")) {
      const nlohmann::json& required = json.at("required");
      check(required.is_array(), "json_schema: " + path + ".required must be an array");
      for (const nlohmann::json& name : required) {
        check(name.is_string(), "json_schema: " + path + ".required holds " + name.dump());
        const std::string quoted = name.dump();
        const auto it =
            std::find(node.names.begin(), node.names.end(), quoted.substr(1, quoted.size() - 2));
        check(it != node.names.end(), "json_schema: " + path + ".required names " + quoted +
                                          ", which is not in its properties");
        node.required[static_cast<size_t>(it - node.names.begin())] = true;
      }
    }
  } else if (type == "array") {
    node.kind = Kind::kArray;
    check(json.contains("items"), "json_schema: " + path + " (an array) needs 'items'");
    node.items = add(json.at("items"), path + ".items");
  } else if (type == "string") {
    node.kind = Kind::kString;
  } else if (type == "number") {
    node.kind = Kind::kNumber;
  } else if (type == "integer") {
    node.kind = Kind::kInteger;
  } else if (type == "boolean") {
    node.kind = Kind::kEnum;
    node.options = {"true", "false"};
  } else if (type == "null") {
    node.kind = Kind::kEnum;
    node.options = {"null"};
  } else {
    throw Error("json_schema: " + path + " has type '" + type +
                "'; supported: object, array, string, number, integer, boolean, null");
  }
  for (const char* key : {"properties", "required", "additionalProperties"})
    check(type == "object" || !json.contains(key),
          "json_schema: " + path + " has '" + key + "' but is not an object");
  check(type == "array" || !json.contains("items"),
        "json_schema: " + path + " has 'items' but is not an array");
  nodes_[static_cast<size_t>(index)] = std::move(node);
  return index;
}

JsonSchemaPrefix::JsonSchemaPrefix(std::shared_ptr<const JsonSchema> schema)
    : schema_(std::move(schema)) {}

bool JsonSchemaPrefix::feed(std::string_view text) {
  const JsonSchemaPrefix saved = *this;
  for (unsigned char c : text)
    if (!step(c)) {
      *this = saved;
      return false;
    }
  return true;
}

void JsonSchemaPrefix::value_done() {
  stack_.pop_back();
  if (stack_.empty()) {
    done_ = true;
    return;
  }
  Frame& parent = stack_.back();
  if (parent.state == State::kMember) {
    parent.seen[static_cast<size_t>(parent.member)] = true;
    parent.state = State::kAfterMember;
  } else {
    parent.state = State::kAfterItem;
  }
}

bool JsonSchemaPrefix::start_value(int node, unsigned char c) {
  const JsonSchema::Node& n = schema_->node(node);
  Frame f;
  f.node = node;
  switch (n.kind) {
    case JsonSchema::Kind::kObject:
      if (c != '{') return false;
      f.state = State::kObjectOpen;
      f.seen.assign(n.names.size(), false);
      break;
    case JsonSchema::Kind::kArray:
      if (c != '[') return false;
      f.state = State::kArrayOpen;
      break;
    case JsonSchema::Kind::kString:
      if (c != '"') return false;
      f.state = State::kString;
      break;
    case JsonSchema::Kind::kNumber:
    case JsonSchema::Kind::kInteger:
      if (c != '-' && !is_digit(c)) return false;
      f.state = State::kNumber;
      f.number = json_lex::number_start(c);
      break;
    case JsonSchema::Kind::kEnum:
      f.state = State::kEnum;
      f.text = std::string(1, static_cast<char>(c));
      if (std::none_of(n.options.begin(), n.options.end(),
                       [&](const std::string& o) { return starts_with(o, f.text); }))
        return false;
      break;
  }
  stack_.push_back(std::move(f));
  // An enum value that is complete and that no other option extends ends here.
  if (n.kind == JsonSchema::Kind::kEnum) {
    const std::string& text = stack_.back().text;
    if (std::find(n.options.begin(), n.options.end(), text) != n.options.end() &&
        std::none_of(n.options.begin(), n.options.end(), [&](const std::string& o) {
          return o.size() > text.size() && starts_with(o, text);
        }))
      value_done();
  }
  return true;
}

bool JsonSchemaPrefix::step(unsigned char c) {
  if (done_) return false;                       // nothing after the root object
  if (stack_.empty()) return start_value(0, c);  // the root object, no whitespace before
  Frame& f = stack_.back();
  const JsonSchema::Node& n = schema_->node(f.node);
  const auto unseen = [&] {
    return std::find(f.seen.begin(), f.seen.end(), false) != f.seen.end();
  };
  const auto required_done = [&] {
    for (size_t i = 0; i < f.seen.size(); ++i)
      if (n.required[i] && !f.seen[i]) return false;
    return true;
  };
  switch (f.state) {
    case State::kString:
      if (c == '"') {
        value_done();
        return true;
      }
      if (c == '\\') {
        f.state = State::kEscape;
        return true;
      }
      return c >= 0x20;  // control characters must be escaped
    case State::kEscape:
      if (c == 'u') {
        f.state = State::kUnicode;
        f.hex_left = 4;
        return true;
      }
      f.state = State::kString;
      return c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
             c == 't';
    case State::kUnicode:
      if (!is_hex(c)) return false;
      if (--f.hex_left == 0) f.state = State::kString;
      return true;
    case State::kInKey: {
      // The key is one of the properties not written yet, byte for byte as JSON writes it.
      std::string text = f.text + static_cast<char>(c);
      for (size_t i = 0; i < n.names.size(); ++i)
        if (!f.seen[i] && c == '"' && f.text == n.names[i]) {
          f.member = static_cast<int>(i);
          f.state = State::kColon;
          return true;
        }
      for (size_t i = 0; i < n.names.size(); ++i)
        if (!f.seen[i] && starts_with(n.names[i], text)) {
          f.text = std::move(text);
          return true;
        }
      return false;
    }
    case State::kNumber: {
      const bool integer = n.kind == JsonSchema::Kind::kInteger;
      switch (json_lex::number_step(f.number, c, integer)) {
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
    case State::kEnum: {
      std::string text = f.text + static_cast<char>(c);
      if (std::any_of(n.options.begin(), n.options.end(),
                      [&](const std::string& o) { return starts_with(o, text); })) {
        f.text = std::move(text);
        if (std::find(n.options.begin(), n.options.end(), f.text) != n.options.end() &&
            std::none_of(n.options.begin(), n.options.end(), [&](const std::string& o) {
              return o.size() > f.text.size() && starts_with(o, f.text);
            }))
          value_done();
        return true;
      }
      // A complete option that another one extends (1 and 12) ends before this byte.
      if (std::find(n.options.begin(), n.options.end(), f.text) == n.options.end()) return false;
      value_done();
      return step(c);
    }
    default:
      break;
  }
  // Between tokens: whitespace in runs of at most 32 bytes.
  if (is_space(c)) return ++blanks_ <= 32;
  blanks_ = 0;
  switch (f.state) {
    case State::kObjectOpen:
    case State::kAfterMember:
      if (c == '}' && required_done()) {
        value_done();
        return true;
      }
      if (f.state == State::kAfterMember) {
        if (c != ',' || !unseen()) return false;
        f.state = State::kKey;
        return true;
      }
      [[fallthrough]];
    case State::kKey:
      if (c != '"' || !unseen()) return false;
      f.state = State::kInKey;
      f.text.clear();
      return true;
    case State::kColon:
      if (c != ':') return false;
      f.state = State::kMember;
      return true;
    case State::kMember:
      return start_value(n.values[static_cast<size_t>(f.member)], c);
    case State::kArrayOpen:
      if (c == ']') {
        value_done();
        return true;
      }
      return start_value(n.items, c);
    case State::kItem:
      return start_value(n.items, c);
    case State::kAfterItem:
      if (c == ']') {
        value_done();
        return true;
      }
      if (c != ',') return false;
      f.state = State::kItem;
      return true;
    default:
      return false;
  }
}

}  // namespace kiln::serve
