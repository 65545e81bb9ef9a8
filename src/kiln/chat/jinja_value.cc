// Values of the Jinja engine with Python semantics: truthiness, str(), repr(), json.dumps,
// == and <.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "kiln/chat/jinja_internal.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::jinja {
namespace {

// Values can nest (and, through list.append, even contain themselves): the recursive
// functions below stop at a fixed depth instead of overflowing the stack.
constexpr int kMaxValueNesting = 512;
thread_local int value_nesting = 0;
struct NestingGuard {
  NestingGuard() {
    if (++value_nesting > kMaxValueNesting) {
      --value_nesting;
      fail("values nested deeper than " + std::to_string(kMaxValueNesting) + " levels");
    }
  }
  ~NestingGuard() { --value_nesting; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;
};

}  // namespace

Value Value::undefined(std::string message) {
  Value v;
  v.s = std::move(message);
  return v;
}
Value Value::none() {
  Value v;
  v.kind = Kind::kNone;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.kind = Kind::kBool;
  v.b = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.kind = Kind::kInt;
  v.i = i;
  return v;
}
Value Value::number(double f) {
  Value v;
  v.kind = Kind::kFloat;
  v.f = f;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.kind = Kind::kString;
  v.s = std::move(s);
  return v;
}
Value Value::make_list(std::vector<Value> items, bool tuple) {
  Value v;
  v.kind = Kind::kList;
  v.list = std::make_shared<ListData>();
  v.list->items = std::move(items);
  v.list->tuple = tuple;
  return v;
}
Value Value::make_dict() {
  Value v;
  v.kind = Kind::kDict;
  v.dict = std::make_shared<DictData>();
  return v;
}
Value Value::function(NativeFunction fn) {
  Value v;
  v.kind = Kind::kFunction;
  v.fn = std::make_shared<NativeFunction>(std::move(fn));
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& json) {
  NestingGuard guard;
  switch (json.type()) {
    case nlohmann::ordered_json::value_t::null:
      return none();
    case nlohmann::ordered_json::value_t::boolean:
      return boolean(json.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return integer(json.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = json.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) return number(double(u));
      return integer(int64_t(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return number(json.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return string(json.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      Value v = make_list();
      v.list->items.reserve(json.size());
      for (const auto& item : json) v.list->items.push_back(from_json(item));
      return v;
    }
    case nlohmann::ordered_json::value_t::object: {
      Value v = make_dict();
      for (const auto& [key, item] : json.items())
        v.dict->entries.emplace_back(key, from_json(item));
      return v;
    }
    default:
      return none();
  }
}

bool Value::truthy() const {
  switch (kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b;
    case Kind::kInt:
      return i != 0;
    case Kind::kFloat:
      return f != 0;
    case Kind::kString:
      return !s.empty();
    case Kind::kList:
      return list->generator || !list->items.empty();
    case Kind::kDict:
      return dict->flavor != DictData::Flavor::kDict || !dict->entries.empty();
    case Kind::kFunction:
      return true;
  }
  return false;
}

const Value* DictData::find(std::string_view key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}

void DictData::set(const std::string& key, Value value) {
  for (auto& [k, v] : entries)
    if (k == key) {
      v = std::move(value);
      return;
    }
  entries.emplace_back(key, std::move(value));
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "NoneType";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "str";
    case Value::Kind::kList:
      if (v.list->generator) return "generator";
      return v.list->tuple ? "tuple" : "list";
    case Value::Kind::kDict:
      switch (v.dict->flavor) {
        case DictData::Flavor::kDict:
          return "dict";
        case DictData::Flavor::kNamespace:
          return "Namespace";
        case DictData::Flavor::kObject:
          return "LoopContext";
      }
      break;
    case Value::Kind::kFunction:
      return "function";
  }
  return "object";
}

std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: fixed for 1e-4 <= |v| < 1e16.
  char buffer[64];
  const auto result =
      std::to_chars(buffer, buffer + sizeof buffer, v, std::chars_format::scientific);
  std::string sci(buffer, result.ptr);
  const size_t e = sci.find('e');
  std::string mantissa = sci.substr(0, e);
  const int exponent = std::stoi(sci.substr(e + 1));
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits += c;
  std::string out;
  if (exponent < -4 || exponent >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  } else if (exponent < 0) {
    out = "0." + std::string(size_t(-exponent - 1), '0') + digits;
  } else {
    const size_t int_digits = size_t(exponent) + 1;
    if (digits.size() <= int_digits) {
      out = digits + std::string(int_digits - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
    }
  }
  return negative ? "-" + out : out;
}

namespace {

std::string repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == quote) {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += char(c);
    }
  }
  out += quote;
  return out;
}

void json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  out += '"';
  for (size_t pos = 0; pos < s.size();) {
    const unsigned char c = s[pos];
    if (c >= 0x80 && ensure_ascii) {
      // One code point (or one byte of invalid UTF-8, as Python's surrogateescape keeps it).
      const size_t length = std::min(tok::utf8_sequence_length(c), s.size() - pos);
      const std::u32string cps = to_code_points(std::string_view(s).substr(pos, length));
      char32_t cp = cps[0];
      pos += cps.size() == 1 ? length : 1;
      char hex[16];
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(hex, sizeof hex, "\\u%04x\\u%04x", unsigned(0xD800 + (cp >> 10)),
                      unsigned(0xDC00 + (cp & 0x3FF)));
      } else {
        std::snprintf(hex, sizeof hex, "\\u%04x", unsigned(cp));
      }
      out += hex;
      continue;
    }
    ++pos;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char hex[8];
          std::snprintf(hex, sizeof hex, "\\u%04x", c);
          out += hex;
        } else {
          out += char(c);
        }
    }
  }
  out += '"';
}

void json_value(const Value& v, const JsonStyle& style, int level, std::string& out) {
  NestingGuard guard;
  const auto newline = [&](int at) {
    if (style.indent < 0 && style.indent_text.empty()) return;
    out += '\n';
    for (int k = 0; k < at; ++k)
      out += style.indent_text.empty() ? std::string(size_t(style.indent), ' ') : style.indent_text;
  };
  switch (v.kind) {
    case Value::Kind::kNone:
      out += "null";
      return;
    case Value::Kind::kBool:
      out += v.b ? "true" : "false";
      return;
    case Value::Kind::kInt:
      out += std::to_string(v.i);
      return;
    case Value::Kind::kFloat:
      if (std::isnan(v.f)) {
        out += "NaN";
      } else if (std::isinf(v.f)) {
        out += v.f > 0 ? "Infinity" : "-Infinity";
      } else {
        out += float_repr(v.f);
      }
      return;
    case Value::Kind::kString:
      json_string(v.s, style.ensure_ascii, out);
      return;
    case Value::Kind::kList: {
      if (v.list->generator) fail("Object of type generator is not JSON serializable");
      if (v.list->items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      bool first = true;
      for (const Value& item : v.list->items) {
        if (!first) out += style.item_separator;
        first = false;
        newline(level + 1);
        json_value(item, style, level + 1, out);
      }
      newline(level);
      out += ']';
      return;
    }
    case Value::Kind::kDict: {
      if (v.dict->flavor != DictData::Flavor::kDict)
        fail("Object of type " + type_name(v) + " is not JSON serializable");
      if (v.dict->entries.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& entry : v.dict->entries) entries.push_back(&entry);
      if (style.sort_keys)
        std::stable_sort(entries.begin(), entries.end(),
                         [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      bool first = true;
      for (const auto* entry : entries) {
        if (!first) out += style.item_separator;
        first = false;
        newline(level + 1);
        json_string(entry->first, style.ensure_ascii, out);
        out += style.key_separator;
        json_value(entry->second, style, level + 1, out);
      }
      newline(level);
      out += '}';
      return;
    }
    case Value::Kind::kUndefined:
    case Value::Kind::kFunction:
      fail("Object of type " + type_name(v) + " is not JSON serializable");
  }
}

}  // namespace

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kString:
      return v.s;
    default:
      return to_repr(v);
  }
}

std::string to_repr(const Value& v) {
  NestingGuard guard;
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.b ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.i);
    case Value::Kind::kFloat:
      return float_repr(v.f);
    case Value::Kind::kString:
      return repr_string(v.s);
    case Value::Kind::kList: {
      if (v.list->generator) return "<generator object>";
      if (!v.list->repr.empty()) return v.list->repr;
      const auto& items = v.list->items;
      std::string out = v.list->tuple ? "(" : "[";
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += ", ";
        out += to_repr(items[k]);
      }
      if (v.list->tuple && items.size() == 1) out += ",";
      out += v.list->tuple ? ")" : "]";
      return out;
    }
    case Value::Kind::kDict: {
      std::string out;
      if (v.dict->flavor == DictData::Flavor::kNamespace) {
        out = "<Namespace {";
      } else if (v.dict->flavor == DictData::Flavor::kObject) {
        return "<LoopContext>";
      } else {
        out = "{";
      }
      bool first = true;
      for (const auto& [key, item] : v.dict->entries) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(key) + ": " + to_repr(item);
      }
      out += "}";
      if (v.dict->flavor == DictData::Flavor::kNamespace) out += ">";
      return out;
    }
    case Value::Kind::kFunction:
      return "<function>";
  }
  return "";
}

std::string to_json(const Value& v, const JsonStyle& style) {
  std::string out;
  json_value(v, style, 0, out);
  return out;
}

bool equals(const Value& a, const Value& b) {
  NestingGuard guard;
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.s == b.s;
    case Value::Kind::kList: {
      if (a.list->generator || b.list->generator) return a.list == b.list;
      if (a.list->tuple != b.list->tuple) return false;
      const auto &x = a.list->items, &y = b.list->items;
      if (x.size() != y.size()) return false;
      for (size_t k = 0; k < x.size(); ++k)
        if (!equals(x[k], y[k])) return false;
      return true;
    }
    case Value::Kind::kDict: {
      if (a.dict == b.dict) return true;
      if (a.dict->flavor != DictData::Flavor::kDict || b.dict->flavor != DictData::Flavor::kDict)
        return false;
      if (a.dict->entries.size() != b.dict->entries.size()) return false;
      for (const auto& [key, item] : a.dict->entries) {
        const Value* other = b.dict->find(key);
        if (!other || !equals(item, *other)) return false;
      }
      return true;
    }
    case Value::Kind::kFunction:
      return a.fn == b.fn;
    default:
      return false;
  }
}

bool less(const Value& a, const Value& b) {
  NestingGuard guard;
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() < b.as_int();
    return a.as_double() < b.as_double();
  }
  if (a.is_string() && b.is_string()) return a.s < b.s;  // UTF-8 order is code point order
  if (a.is_list() && b.is_list() && a.list->tuple == b.list->tuple) {
    const auto &x = a.list->items, &y = b.list->items;
    for (size_t k = 0; k < x.size() && k < y.size(); ++k) {
      if (equals(x[k], y[k])) continue;
      return less(x[k], y[k]);
    }
    return x.size() < y.size();
  }
  fail("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

std::u32string to_code_points(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const unsigned char c = text[pos];
    if (c < 0x80) {
      out += char32_t(c);
      ++pos;
    } else if (tok::utf8_valid_prefix(text.substr(pos, tok::utf8_sequence_length(c))) ==
               std::min(text.size() - pos, tok::utf8_sequence_length(c))) {
      out += tok::next_code_point(text, pos);
    } else {
      out += char32_t(0xDC00 + c);  // a lone byte, kept as Python's surrogateescape would
      ++pos;
    }
  }
  return out;
}

std::string from_code_points(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t cp : cps) {
    if (cp >= 0xDC80 && cp <= 0xDCFF) {
      out += char(cp - 0xDC00);
    } else {
      tok::append_utf8(out, cp);
    }
  }
  return out;
}

}  // namespace kiln::jinja
