// Operators, filters, tests and methods of the Jinja engine, each as Python and jinja2 define
// it (jinja2 3.1 filters, with transformers' tojson).
#include "kiln/chat/jinja_builtins.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "kiln/tokenizer/unicode_normalization.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::jinja {
namespace {

// Positional argument `index`, else keyword `name`, else `fallback`.
Value arg(const Args& args, size_t index, std::string_view name, Value fallback = Value::none()) {
  for (const auto& [key, value] : args.keywords)
    if (key == name) return value;
  if (index < args.positional.size()) return args.positional[index];
  return fallback;
}
bool has_arg(const Args& args, size_t index, std::string_view name) {
  for (const auto& [key, value] : args.keywords)
    if (key == name) return true;
  return index < args.positional.size();
}

// Parameter names of the filters, tests and methods, after the value (jinja2 3.1 and
// transformers' tojson): more positional arguments than names, or an unknown keyword, is an
// error as in Python. Variadic ones (map, select, format, ...) are checked where they run.
struct Signature {
  const char* name;
  std::vector<const char*> params;
};
const std::vector<Signature>& filter_signatures() {
  static const std::vector<Signature> table = {
      {"safe", {}},
      {"forceescape", {}},
      {"string", {}},
      {"default", {"default_value", "boolean"}},
      {"d", {"default_value", "boolean"}},
      {"length", {}},
      {"count", {}},
      {"tojson", {"ensure_ascii", "indent", "separators", "sort_keys"}},
      {"trim", {"chars"}},
      {"upper", {}},
      {"lower", {}},
      {"capitalize", {}},
      {"title", {}},
      {"first", {}},
      {"last", {}},
      {"join", {"d", "attribute"}},
      {"list", {}},
      {"items", {}},
      {"int", {"default", "base"}},
      {"float", {"default"}},
      {"abs", {}},
      {"round", {"precision", "method"}},
      {"replace", {"old", "new", "count"}},
      {"indent", {"width", "first", "blank"}},
      {"center", {"width"}},
      {"wordcount", {}},
      {"reverse", {}},
      {"sort", {"reverse", "case_sensitive", "attribute"}},
      {"dictsort", {"case_sensitive", "by", "reverse"}},
      {"unique", {"case_sensitive", "attribute"}},
      {"min", {"case_sensitive", "attribute"}},
      {"max", {"case_sensitive", "attribute"}},
      {"sum", {"attribute", "start"}},
      {"attr", {"name"}},
      {"escape", {}},
      {"e", {}},
  };
  return table;
}

void check_signature(const std::string& what, const std::vector<const char*>& params,
                     const Args& args) {
  if (args.positional.size() > params.size())
    fail(what + " takes at most " + std::to_string(params.size()) + " argument(s) (" +
         std::to_string(args.positional.size()) + " given)");
  for (const auto& [key, value] : args.keywords) {
    bool known = false;
    for (const char* p : params) known = known || key == p;
    if (!known) fail(what + " got an unexpected keyword argument '" + key + "'");
  }
}

std::string expect_string(const Value& v, const char* what) {
  if (!v.is_string()) fail(std::string(what) + " must be str, not " + type_name(v));
  return v.s;
}
int64_t expect_int(const Value& v, const char* what) {
  if (!v.is_integral())
    fail(std::string(what) + ": '" + type_name(v) + "' object cannot be interpreted as an integer");
  return v.as_int();
}

// A non-negative decimal integer, failing (not throwing std::out_of_range) when too large.
int64_t parse_count(const std::string& digits, const char* what) {
  int64_t n = 0;
  const auto result = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (result.ec != std::errc() || result.ptr != digits.data() + digits.size())
    fail(std::string(what) + " too large");
  return n;
}

// A float truncated to an int, failing when it does not fit in 64 bits.
int64_t truncate_to_int(double d) {
  if (!(d > -9.2e18 && d < 9.2e18)) fail("cannot convert " + float_repr(d) + " to an integer");
  return int64_t(std::trunc(d));
}

// Python's str.isspace for one code point.
bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

char32_t char_upper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if (c < 0x80) return c;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 &&
      c != 0x17F) {
    const bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (odd_upper ? (c % 2 == 0) : (c % 2 == 1)) return c - 1;
    return c;
  }
  if (c >= 0x3B1 && c <= 0x3C9) return c == 0x3C2 ? 0x3A3 : c - 32;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}

char32_t char_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0x80) return c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 &&
      c != 0x17F) {
    const bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (odd_upper ? (c % 2 == 1) : (c % 2 == 0)) return c + 1;
    return c;
  }
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}

bool is_cased(char32_t c) {
  return char_upper(c) != c || char_lower(c) != c;
}

std::string str_upper(const std::string& s) {
  std::u32string cps = to_code_points(s);
  std::u32string out;
  for (char32_t c : cps) {
    if (c == 0xDF) {
      out += U"SS";
    } else {
      out += char_upper(c);
    }
  }
  return from_code_points(out);
}

std::string str_lower(const std::string& s) {
  bool ascii = true;
  for (unsigned char c : s) ascii = ascii && c < 0x80;
  if (!ascii && tok::utf8_valid_prefix(s) == s.size()) return tok::to_lowercase(s);
  if (!ascii) {
    std::u32string cps = to_code_points(s);
    for (char32_t& c : cps) c = char_lower(c);
    return from_code_points(cps);
  }
  std::string out = s;
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c + 32);
  return out;
}

std::string str_capitalize(const std::string& s) {
  std::u32string cps = to_code_points(s);
  for (size_t k = 0; k < cps.size(); ++k) cps[k] = k == 0 ? char_upper(cps[k]) : char_lower(cps[k]);
  return from_code_points(cps);
}

// Python's str.title: a cased character after an uncased one is upper-cased, others lowered.
std::string str_title(const std::string& s) {
  std::u32string cps = to_code_points(s);
  bool previous_cased = false;
  for (char32_t& c : cps) {
    const bool cased = is_cased(c);
    c = previous_cased ? char_lower(c) : char_upper(c);
    previous_cased = cased;
  }
  return from_code_points(cps);
}

// jinja2's title filter: words split at runs of -, whitespace, (, {, [, <.
std::string jinja_title(const std::string& s) {
  std::u32string cps = to_code_points(s);
  bool word_start = true;
  for (char32_t& c : cps) {
    const bool separator =
        c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_py_space(c);
    if (separator) {
      word_start = true;
      continue;
    }
    c = word_start ? char_upper(c) : char_lower(c);
    word_start = false;
  }
  return from_code_points(cps);
}

// str.strip / lstrip / rstrip with Python's whitespace or a set of characters.
std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  const std::u32string cps = to_code_points(s);
  std::u32string set;
  const bool custom = !chars.is_none();
  if (custom) {
    if (!chars.is_string()) fail("strip arg must be None or str");
    set = to_code_points(chars.s);
  }
  const auto drop = [&](char32_t c) {
    return custom ? set.find(c) != std::u32string::npos : is_py_space(c);
  };
  size_t begin = 0, end = cps.size();
  if (left)
    while (begin < end && drop(cps[begin])) ++begin;
  if (right)
    while (end > begin && drop(cps[end - 1])) --end;
  return from_code_points(std::u32string_view(cps).substr(begin, end - begin));
}

std::vector<std::string> split(const std::string& s, const Value& sep_value, int64_t maxsplit,
                               bool from_right) {
  std::vector<std::string> parts;
  if (sep_value.is_none() || sep_value.is_undefined()) {
    const std::u32string cps = to_code_points(s);
    // Whitespace runs; from the right when rsplit with a limit.
    std::vector<std::pair<size_t, size_t>> words;
    for (size_t k = 0; k < cps.size();) {
      while (k < cps.size() && is_py_space(cps[k])) ++k;
      if (k == cps.size()) break;
      size_t end = k;
      while (end < cps.size() && !is_py_space(cps[end])) ++end;
      words.emplace_back(k, end);
      k = end;
    }
    if (maxsplit < 0 || size_t(maxsplit) >= words.size()) {
      for (auto [b, e] : words)
        parts.push_back(from_code_points(std::u32string_view(cps).substr(b, e - b)));
      return parts;
    }
    // Python keeps the whitespace inside and beyond the unsplit remainder.
    const std::u32string_view all(cps);
    if (!from_right) {
      for (size_t w = 0; w < size_t(maxsplit); ++w)
        parts.push_back(
            from_code_points(all.substr(words[w].first, words[w].second - words[w].first)));
      parts.push_back(from_code_points(all.substr(words[size_t(maxsplit)].first)));
    } else {
      const size_t first_kept = words.size() - size_t(maxsplit);
      parts.push_back(from_code_points(all.substr(0, words[first_kept - 1].second)));
      for (size_t w = first_kept; w < words.size(); ++w)
        parts.push_back(
            from_code_points(all.substr(words[w].first, words[w].second - words[w].first)));
    }
    return parts;
  }
  const std::string sep = expect_string(sep_value, "separator");
  if (sep.empty()) fail("empty separator");
  if (!from_right) {
    size_t pos = 0;
    while (maxsplit < 0 || int64_t(parts.size()) < maxsplit) {
      const size_t at = s.find(sep, pos);
      if (at == std::string::npos) break;
      parts.push_back(s.substr(pos, at - pos));
      pos = at + sep.size();
    }
    parts.push_back(s.substr(pos));
    return parts;
  }
  size_t end = s.size();
  std::vector<std::string> reversed;
  while (maxsplit < 0 || int64_t(reversed.size()) < maxsplit) {
    if (end < sep.size()) break;
    const size_t at = s.rfind(sep, end - sep.size());
    if (at == std::string::npos) break;
    reversed.push_back(s.substr(at + sep.size(), end - at - sep.size()));
    end = at;
  }
  reversed.push_back(s.substr(0, end));
  return std::vector<std::string>(reversed.rbegin(), reversed.rend());
}

Value string_list(const std::vector<std::string>& parts) {
  std::vector<Value> items;
  for (const auto& p : parts) items.push_back(Value::string(p));
  return Value::make_list(std::move(items));
}

std::string replace(Context& ctx, const std::string& s, const std::string& old,
                    const std::string& with, int64_t count) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {
    const std::u32string cps = to_code_points(s);
    for (size_t k = 0; k <= cps.size(); ++k) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      if (k < cps.size()) out += from_code_points(std::u32string_view(cps).substr(k, 1));
      ctx.check_size(out.size());
    }
    return out;
  }
  size_t pos = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old, pos);
    if (at == std::string::npos) break;
    out.append(s, pos, at - pos);
    out += with;
    ctx.check_size(out.size());
    pos = at + old.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

int64_t length(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return int64_t(to_code_points(v.s).size());
    case Value::Kind::kList:
      if (v.list->generator) break;
      return int64_t(v.list->items.size());
    case Value::Kind::kDict:
      if (v.dict->flavor == DictData::Flavor::kDict) return int64_t(v.dict->entries.size());
      break;
    default:
      break;
  }
  fail("object of type '" + type_name(v) + "' has no len()");
}

// A dotted attribute path ("a.b", "0") of jinja2's attribute= arguments.
Value attribute_path(Context& ctx, const Value& item, const Value& path) {
  if (path.is_integral()) return get_item(ctx, item, path);
  Value v = item;
  const std::string p = to_str(path);
  size_t pos = 0;
  while (true) {
    const size_t dot = p.find('.', pos);
    std::string part = p.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    v = digits ? get_item(ctx, v, Value::integer(parse_count(part, "attribute index")))
               : get_item(ctx, v, Value::string(part));
    if (dot == std::string::npos) return v;
    pos = dot + 1;
  }
}

// Sort key comparison with jinja2's case_sensitive=False (strings compared lower-cased).
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(str_lower(v.s));
  return v;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Python's printf-style formatting: fmt % values.
std::string percent_format(const std::string& fmt, const Value& values) {
  std::vector<Value> positional;
  const Value* mapping = nullptr;
  if (values.is_list() && values.list->tuple) {
    positional = values.list->items;
  } else if (values.is_dict()) {
    mapping = &values;
  } else {
    positional.push_back(values);
  }
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out += fmt[k];
      continue;
    }
    if (++k >= fmt.size()) fail("incomplete format");
    if (fmt[k] == '%') {
      out += '%';
      continue;
    }
    const Value* value = nullptr;
    if (fmt[k] == '(') {
      const size_t close = fmt.find(')', k);
      if (close == std::string::npos || !mapping) fail("format requires a mapping");
      value = mapping->dict->find(fmt.substr(k + 1, close - k - 1));
      if (!value) fail("KeyError: '" + fmt.substr(k + 1, close - k - 1) + "'");
      k = close + 1;
    }
    std::string spec = "%";
    while (k < fmt.size() && std::string_view("-+ #0").find(fmt[k]) != std::string_view::npos)
      spec += fmt[k++];
    while (k < fmt.size() && (std::isdigit(static_cast<unsigned char>(fmt[k])) || fmt[k] == '.'))
      spec += fmt[k++];
    if (k >= fmt.size()) fail("incomplete format");
    const char conv = fmt[k];
    if (!value) {
      if (next >= positional.size()) fail("not enough arguments for format string");
      value = &positional[next++];
    }
    // Width and precision: bounded, and counted in code points for strings.
    size_t width = 0, precision = std::string::npos;
    {
      const size_t dot = spec.find('.');
      std::string digits = spec.substr(1, dot == std::string::npos ? std::string::npos : dot - 1);
      digits.erase(
          std::remove_if(digits.begin(), digits.end(),
                         [](char c) { return !std::isdigit(static_cast<unsigned char>(c)); }),
          digits.end());
      if (!digits.empty()) width = size_t(parse_count(digits, "format width"));
      if (dot != std::string::npos)
        precision = size_t(parse_count("0" + spec.substr(dot + 1), "format precision"));
      if (width > 4096 || (precision != std::string::npos && precision > 4096))
        fail("format width or precision too large");
    }
    char buffer[10000];
    switch (conv) {
      case 's':
      case 'r':
      case 'a': {
        const std::string text = conv == 's' ? to_str(*value) : to_repr(*value);
        const bool left = spec.find('-') != std::string::npos;
        std::u32string cps = to_code_points(text);
        if (precision != std::string::npos && cps.size() > precision) cps.resize(precision);
        std::string body = from_code_points(cps);
        const std::string pad(width > cps.size() ? width - cps.size() : 0, ' ');
        out += left ? body + pad : pad + body;
        break;
      }
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o':
      case 'c': {
        if (!value->is_number())
          fail("%" + std::string(1, conv) + " format: a real number is required, not " +
               type_name(*value));
        const char c = conv == 'i' || conv == 'u' ? 'd' : conv;
        if (c != 'd' && value->kind == Value::Kind::kFloat)
          fail(c == 'c'
                   ? std::string("%c requires int or char")
                   : "%" + std::string(1, conv) + " format: an integer is required, not float");
        const long long n = value->kind == Value::Kind::kFloat ? truncate_to_int(value->f)
                                                               : (long long)value->as_int();
        if (c == 'c') {
          if (n < 0 || n > 0x10FFFF) fail("%c arg not in range(0x110000)");
          std::string one;
          tok::append_utf8(one, char32_t(n));
          out += one;
        } else {
          std::snprintf(buffer, sizeof buffer, (spec + "ll" + c).c_str(), n);
          out += buffer;
        }
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G': {
        if (!value->is_number()) fail("must be real number, not " + type_name(*value));
        std::snprintf(buffer, sizeof buffer, (spec + conv).c_str(), value->as_double());
        out += buffer;
        break;
      }
      default:
        fail(std::string("unsupported format character '") + conv + "'");
    }
  }
  // Python: leftover arguments are an error, unless the argument is mapping-like (a dict, a
  // list, or jinja2's Undefined).
  const bool mapping_like =
      mapping || (values.is_list() && !values.list->tuple) || values.is_undefined();
  if (!mapping_like && next < positional.size())
    fail("not all arguments converted during string formatting");
  return out;
}

// Python's str.format with {} / {0} / {name} fields (conversions and specs ignored, but for
// simple widths on numbers not supported).
std::string brace_format(const std::string& fmt, const Args& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    const char c = fmt[k];
    if (c == '{' && k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out += '{';
      ++k;
    } else if (c == '}' && k + 1 < fmt.size() && fmt[k + 1] == '}') {
      out += '}';
      ++k;
    } else if (c == '{') {
      const size_t close = fmt.find('}', k);
      if (close == std::string::npos) fail("Single '{' encountered in format string");
      std::string field = fmt.substr(k + 1, close - k - 1);
      const size_t colon = field.find_first_of(":!");
      if (colon != std::string::npos) field.resize(colon);
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_index >= args.positional.size()) fail("Replacement index out of range");
        v = &args.positional[auto_index++];
      } else if (std::all_of(field.begin(), field.end(), ::isdigit)) {
        const size_t index = size_t(parse_count(field, "replacement index"));
        if (index >= args.positional.size()) fail("Replacement index out of range");
        v = &args.positional[index];
      } else {
        for (const auto& [key, value] : args.keywords)
          if (key == field) v = &value;
        if (!v) fail("KeyError: '" + field + "'");
      }
      out += to_str(*v);
      k = close;
    } else if (c == '}') {
      fail("Single '}' encountered in format string");
    } else {
      out += c;
    }
  }
  return out;
}

Value string_method(Context& ctx, const std::string& s, const std::string& name, Args& args) {
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return Value::string(strip(s, arg(args, 0, "chars"), name != "rstrip", name != "lstrip"));
  if (name == "split" || name == "rsplit") {
    const Value limit = arg(args, 1, "maxsplit", Value::integer(-1));
    return string_list(
        split(s, arg(args, 0, "sep"), expect_int(limit, "maxsplit"), name == "rsplit"));
  }
  if (name == "splitlines") {
    std::vector<std::string> lines;
    const bool keep = arg(args, 0, "keepends", Value::boolean(false)).truthy();
    size_t start = 0;
    for (size_t k = 0; k < s.size(); ++k) {
      if (s[k] != '\n' && s[k] != '\r') continue;
      size_t end = k + 1;
      if (s[k] == '\r' && end < s.size() && s[end] == '\n') ++end;
      lines.push_back(s.substr(start, (keep ? end : k) - start));
      start = end;
      k = end - 1;
    }
    if (start < s.size()) lines.push_back(s.substr(start));
    return string_list(lines);
  }
  if (name == "startswith" || name == "endswith") {
    const Value prefix = arg(args, 0, "prefix");
    std::vector<Value> options = prefix.is_list() ? prefix.list->items : std::vector<Value>{prefix};
    for (const Value& option : options) {
      const std::string p = expect_string(option, (name + " arg").c_str());
      if (name == "startswith" ? s.starts_with(p) : s.ends_with(p)) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (name == "upper") return Value::string(str_upper(s));
  if (name == "lower") return Value::string(str_lower(s));
  if (name == "title") return Value::string(str_title(s));
  if (name == "capitalize") return Value::string(str_capitalize(s));
  if (name == "replace") {
    const Value count = arg(args, 2, "count", Value::integer(-1));
    return Value::string(replace(ctx, s, expect_string(arg(args, 0, "old"), "replace arg 1"),
                                 expect_string(arg(args, 1, "new"), "replace arg 2"),
                                 expect_int(count, "count")));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    const std::u32string hay = to_code_points(s);
    const std::u32string needle = to_code_points(expect_string(arg(args, 0, "sub"), "substring"));
    if (name == "count") {
      if (needle.empty()) return Value::integer(int64_t(hay.size()) + 1);
      int64_t n = 0;
      for (size_t at = hay.find(needle); at != std::u32string::npos;
           at = hay.find(needle, at + needle.size()))
        ++n;
      return Value::integer(n);
    }
    const size_t at = name[0] == 'r' ? hay.rfind(needle) : hay.find(needle);
    if (at == std::u32string::npos) {
      if (name.ends_with("index")) fail("substring not found");
      return Value::integer(-1);
    }
    return Value::integer(int64_t(at));
  }
  if (name == "format") return Value::string(brace_format(s, args));
  if (name == "join") {
    std::string out;
    bool first = true;
    for (const Value& item : iterate(arg(args, 0, "iterable"))) {
      if (!first) out += s;
      first = false;
      out += expect_string(item, "sequence item");
      ctx.check_size(out.size());
    }
    return Value::string(out);
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const std::string affix = expect_string(arg(args, 0, "prefix"), name.c_str());
    if (name == "removeprefix" && s.starts_with(affix))
      return Value::string(s.substr(affix.size()));
    if (name == "removesuffix" && s.ends_with(affix) && !affix.empty())
      return Value::string(s.substr(0, s.size() - affix.size()));
    return Value::string(s);
  }
  if (name.starts_with("is")) {
    const std::u32string cps = to_code_points(s);
    if (cps.empty()) return Value::boolean(false);
    bool all = true, any_cased = false;
    for (char32_t c : cps) {
      const bool alpha = c < 0x80 ? std::isalpha(int(c)) != 0 : is_cased(c);
      const bool digit = c >= '0' && c <= '9';
      const bool cased = is_cased(c);
      any_cased = any_cased || cased;
      if (name == "isdigit" || name == "isnumeric" || name == "isdecimal") all = all && digit;
      if (name == "isalpha") all = all && alpha;
      if (name == "isalnum") all = all && (alpha || digit);
      if (name == "isspace") all = all && is_py_space(c);
      if (name == "islower") all = all && (!cased || char_lower(c) == c);
      if (name == "isupper") all = all && (!cased || char_upper(c) == c);
    }
    if (name == "islower" || name == "isupper") return Value::boolean(all && any_cased);
    return Value::boolean(all);
  }
  fail("'str' object has no attribute '" + name + "'");
}

const char* const kStringMethods[] = {
    "strip",      "lstrip",   "rstrip",       "split",        "rsplit",  "splitlines",
    "startswith", "endswith", "upper",        "lower",        "title",   "capitalize",
    "replace",    "find",     "rfind",        "index",        "rindex",  "count",
    "format",     "join",     "removeprefix", "removesuffix", "isdigit", "isnumeric",
    "isdecimal",  "isalpha",  "isalnum",      "isspace",      "islower", "isupper"};
const char* const kDictMethods[] = {"items", "keys", "values", "get"};
const char* const kListMethods[] = {"append", "index", "count"};

template <size_t N>
bool listed(const char* const (&names)[N], const std::string& name) {
  for (const char* n : names)
    if (name == n) return true;
  return false;
}

Value items_of(const Value& dict) {
  std::vector<Value> items;
  for (const auto& [key, value] : dict.dict->entries)
    items.push_back(Value::make_list({Value::string(key), value}, true));
  return Value::make_list(std::move(items));
}

size_t method_arity(const Value& object, const std::string& name) {
  if (object.is_string()) {
    if (name == "strip" || name == "lstrip" || name == "rstrip" || name == "splitlines" ||
        name == "join" || name == "removeprefix" || name == "removesuffix")
      return 1;
    if (name == "split" || name == "rsplit") return 2;
    if (name == "replace" || name == "startswith" || name == "endswith" || name == "find" ||
        name == "rfind" || name == "index" || name == "rindex" || name == "count")
      return 3;
    if (name == "format") return SIZE_MAX;
    return 0;
  }
  if (object.is_dict()) return name == "get" ? 2 : 0;
  if (name == "index") return 3;
  return 1;  // append, count
}

Value method(Context& ctx, const Value& object, const std::string& name, Args& args) {
  const size_t arity = method_arity(object, name);
  if (arity != SIZE_MAX && args.positional.size() + args.keywords.size() > arity)
    fail(type_name(object) + "." + name + "() takes at most " + std::to_string(arity) +
         " argument(s)");
  if (object.is_string()) return string_method(ctx, object.s, name, args);
  if (object.is_dict()) {
    if (name == "items") return items_of(object);
    if (name == "keys" || name == "values") {
      std::vector<Value> items;
      for (const auto& [key, value] : object.dict->entries)
        items.push_back(name == "keys" ? Value::string(key) : value);
      return Value::make_list(std::move(items));
    }
    if (name == "get") {
      const Value key = arg(args, 0, "key");
      const Value* found = object.dict->find(key.is_string() ? key.s : to_str(key));
      return found ? *found : arg(args, 1, "default");
    }
  }
  if (object.is_list()) {
    auto& items = object.list->items;
    if (name == "append") {
      if (object.list->tuple) fail("'tuple' object has no attribute 'append'");
      const Value item = arg(args, 0, "object");
      if (item.is_list() && item.list == object.list) fail("cannot append a list to itself");
      ctx.check_size((items.size() + 1) * sizeof(Value));
      items.push_back(item);
      return Value::none();
    }
    if (name == "index" || name == "count") {
      const Value needle = arg(args, 0, "value");
      int64_t n = 0;
      for (size_t k = 0; k < items.size(); ++k) {
        if (!equals(items[k], needle)) continue;
        if (name == "index") return Value::integer(int64_t(k));
        ++n;
      }
      if (name == "index") fail(to_repr(needle) + " is not in list");
      return Value::integer(n);
    }
  }
  fail("'" + type_name(object) + "' object has no attribute '" + name + "'");
}

Value bound_method(Context& ctx, const Value& object, const std::string& name) {
  return Value::function(
      [&ctx, object, name](Args& args) { return method(ctx, object, name, args); });
}

std::string object_name(const Value& v) {
  return "'" + type_name(v) + " object'";
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string())
        fail("'in <string>' requires string as left operand, not " + type_name(item));
      return container.s.find(item.s) != std::string::npos;
    case Value::Kind::kList:
      for (const Value& v : container.list->items)
        if (equals(v, item)) return true;
      return false;
    case Value::Kind::kDict:
      if (container.dict->flavor == DictData::Flavor::kDict)
        return item.is_string() && container.dict->find(item.s) != nullptr;
      break;
    default:
      break;
  }
  fail("argument of type '" + type_name(container) + "' is not iterable");
}

// Python ints do not overflow; Kiln's are 64-bit and fail instead.
int64_t int_op(char op, int64_t a, int64_t b) {
  int64_t r = 0;
  const bool overflow = op == '+'   ? __builtin_add_overflow(a, b, &r)
                        : op == '-' ? __builtin_sub_overflow(a, b, &r)
                                    : __builtin_mul_overflow(a, b, &r);
  if (overflow) fail("integer overflow");
  return r;
}

Value repeat(Context& ctx, const Value& seq, int64_t times) {
  if (times < 0) times = 0;
  const size_t unit = seq.is_string() ? seq.s.size() : seq.list->items.size() * sizeof(Value);
  size_t total = 0;
  if (__builtin_mul_overflow(unit, size_t(times), &total)) total = SIZE_MAX;
  ctx.check_size(total);
  if (seq.is_string()) {
    std::string out;
    for (int64_t k = 0; k < times; ++k) out += seq.s;
    return Value::string(out);
  }
  std::vector<Value> out;
  for (int64_t k = 0; k < times; ++k)
    out.insert(out.end(), seq.list->items.begin(), seq.list->items.end());
  return Value::make_list(std::move(out), seq.list->tuple);
}

[[noreturn]] void unsupported(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail(a.s);
  if (b.is_undefined()) fail(b.s);
  fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) +
       "'");
}

double py_round(double v, int64_t digits) {
  if (!std::isfinite(v)) return v;
  if (digits >= 0 && digits < 300) {
    char buffer[512];
    std::snprintf(buffer, sizeof buffer, "%.*f", int(digits), v);  // exact, ties to even
    return std::strtod(buffer, nullptr);
  }
  const double scale = std::pow(10.0, double(-digits));
  return std::nearbyint(v / scale) * scale;
}

Value to_int(const Value& v, const Value& fallback, int64_t base) {
  if (v.is_integral()) return Value::integer(v.as_int());
  if (v.kind == Value::Kind::kFloat) {
    if (!(v.f > -9.2e18 && v.f < 9.2e18)) return fallback;
    return Value::integer(int64_t(std::trunc(v.f)));
  }
  if (v.is_string()) {
    std::string text = strip(v.s, Value::none(), true, true);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    if (!text.empty()) {
      char* end = nullptr;
      errno = 0;
      const long long n = std::strtoll(text.c_str(), &end, int(base));
      if (errno == 0 && end && *end == '\0') return Value::integer(n);
      const double d = std::strtod(text.c_str(), &end);
      if (end && *end == '\0' && d > -9.2e18 && d < 9.2e18)
        return Value::integer(int64_t(std::trunc(d)));
    }
  }
  return fallback;
}

Value to_float(const Value& v, const Value& fallback) {
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_string()) {
    std::string text = strip(v.s, Value::none(), true, true);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    if (!text.empty()) {
      char* end = nullptr;
      const double d = std::strtod(text.c_str(), &end);
      if (end && *end == '\0') return Value::number(d);
    }
  }
  return fallback;
}

Value select(Context& ctx, const std::string& name, const Value& input, Args& args) {
  if (!input.truthy()) return Value::make_list();  // jinja2: "if value:" before anything
  const bool attr = name.ends_with("attr");
  const bool keep_matching = name.starts_with("select");
  size_t next = 0;
  Value attribute;
  if (attr) attribute = arg(args, next++, "attribute");
  const bool has_test = next < args.positional.size();
  std::string test;
  if (has_test) test = to_str(args.positional[next++]);
  Args test_args;
  test_args.positional.assign(args.positional.begin() + std::ptrdiff_t(next),
                              args.positional.end());
  std::vector<Value> out;
  for (const Value& item : iterate(input)) {
    const Value subject = attr ? attribute_path(ctx, item, attribute) : item;
    Args copy = test_args;
    const bool pass = has_test ? apply_test(ctx, test, subject, copy) : subject.truthy();
    if (pass == keep_matching) out.push_back(item);
  }
  return Value::make_list(std::move(out));
}

Value map_filter(Context& ctx, const Value& input, Args& args) {
  std::vector<Value> out;
  if (!input.truthy()) return Value::make_list();  // jinja2: "if value:" before anything
  if (args.positional.empty()) {
    check_signature("filter 'map'", {"attribute", "default"}, args);
    const Value attribute = arg(args, 99, "attribute");
    if (attribute.is_none()) fail("map requires a filter name or attribute=");
    const bool has_default = has_arg(args, 99, "default");
    const Value fallback = arg(args, 99, "default");
    for (const Value& item : iterate(input)) {
      Value v = attribute_path(ctx, item, attribute);
      if (v.is_undefined() && has_default) v = fallback;
      out.push_back(v);
    }
    return Value::make_list(std::move(out));
  }
  const std::string filter = to_str(args.positional[0]);
  Args rest;
  rest.positional.assign(args.positional.begin() + 1, args.positional.end());
  rest.keywords = args.keywords;
  for (const Value& item : iterate(input)) {
    Args copy = rest;
    out.push_back(apply_filter(ctx, filter, item, copy));
  }
  return Value::make_list(std::move(out));
}

Value sorted(Context& ctx, std::vector<Value> items, const Args& args, bool reverse_default) {
  const bool reverse = arg(args, 0, "reverse", Value::boolean(reverse_default)).truthy();
  const bool case_sensitive = arg(args, 1, "case_sensitive", Value::boolean(false)).truthy();
  const Value attribute = arg(args, 2, "attribute");
  std::vector<std::pair<Value, Value>> keyed;
  for (Value& item : items) {
    Value key = attribute.is_none() ? item : attribute_path(ctx, item, attribute);
    keyed.emplace_back(sort_key(key, case_sensitive), std::move(item));
  }
  std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& a, const auto& b) {
    return reverse ? less(b.first, a.first) : less(a.first, b.first);
  });
  std::vector<Value> out;
  for (auto& [key, item] : keyed) out.push_back(std::move(item));
  return Value::make_list(std::move(out));
}

const char* const kFilters[] = {
    "safe",     "forceescape", "string",     "default", "d",          "length",  "count",
    "tojson",   "trim",        "upper",      "lower",   "capitalize", "title",   "first",
    "last",     "join",        "list",       "items",   "int",        "float",   "abs",
    "round",    "replace",     "indent",     "center",  "wordcount",  "reverse", "sort",
    "dictsort", "unique",      "min",        "max",     "sum",        "map",     "select",
    "reject",   "selectattr",  "rejectattr", "attr",    "escape",     "e",       "format"};
const char* const kTests[] = {
    "defined", "undefined",   "none",     "boolean",  "true",     "false",       "integer", "float",
    "number",  "string",      "mapping",  "iterable", "sequence", "callable",    "escaped", "odd",
    "even",    "divisibleby", "lower",    "upper",    "equalto",  "eq",          "==",      "ne",
    "!=",      "lt",          "lessthan", "<",        "gt",       "greaterthan", ">",       "le",
    "<=",      "ge",          ">=",       "in",       "sameas"};

}  // namespace

bool is_filter(const std::string& name) {
  return listed(kFilters, name);
}
bool is_test(const std::string& name) {
  return listed(kTests, name);
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
      if (!v.list->deferred_error.empty()) fail(v.list->deferred_error);
      return v.list->items;
    case Value::Kind::kDict:
      if (v.dict->flavor == DictData::Flavor::kDict) {
        std::vector<Value> keys;
        for (const auto& [key, item] : v.dict->entries) keys.push_back(Value::string(key));
        return keys;
      }
      break;
    case Value::Kind::kString: {
      std::vector<Value> chars;
      for (char32_t c : to_code_points(v.s))
        chars.push_back(Value::string(from_code_points(std::u32string_view(&c, 1))));
      return chars;
    }
    default:
      break;
  }
  fail("'" + type_name(v) + "' object is not iterable");
}

Value get_attr(Context& ctx, const Value& object, const std::string& name) {
  switch (object.kind) {
    case Value::Kind::kUndefined:
      fail(object.s);
    case Value::Kind::kString:
      if (listed(kStringMethods, name)) return bound_method(ctx, object, name);
      break;
    case Value::Kind::kList:
      if (listed(kListMethods, name)) return bound_method(ctx, object, name);
      break;
    case Value::Kind::kDict:
      if (object.dict->flavor == DictData::Flavor::kDict && listed(kDictMethods, name))
        return bound_method(ctx, object, name);
      if (const Value* v = object.dict->find(name)) return *v;
      break;
    default:
      break;
  }
  return Value::undefined(object_name(object) + " has no attribute '" + name + "'");
}

Value get_item(Context& ctx, const Value& object, const Value& key) {
  switch (object.kind) {
    case Value::Kind::kUndefined:
      fail(object.s);
    case Value::Kind::kDict:
      if (object.dict->flavor == DictData::Flavor::kDict) {
        if (const Value* v = object.dict->find(key.is_string() ? key.s : to_str(key))) return *v;
      }
      break;
    case Value::Kind::kList:
    case Value::Kind::kString:
      if (object.is_list() && object.list->generator)  // jinja2: TypeError -> undefined
        return Value::undefined("'generator object' has no element " + to_repr(key));
      if (key.is_integral()) {
        int64_t index = key.as_int();
        if (object.is_list()) {
          const int64_t n = int64_t(object.list->items.size());
          if (index < 0) index += n;
          if (index >= 0 && index < n) return object.list->items[size_t(index)];
        } else {
          const std::u32string cps = to_code_points(object.s);
          const int64_t n = int64_t(cps.size());
          if (index < 0) index += n;
          if (index >= 0 && index < n)
            return Value::string(
                from_code_points(std::u32string_view(cps).substr(size_t(index), 1)));
        }
        return Value::undefined(object_name(object) + " has no element " + to_repr(key));
      }
      break;
    default:
      break;
  }
  if (key.is_string()) return get_attr(ctx, object, key.s);
  return Value::undefined(object_name(object) + " has no element " + to_repr(key));
}

Value slice(const Value& object, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (object.is_undefined()) fail(object.s);
  // jinja2 compiles a slice to a plain Python subscript: errors raise (unlike x[i]).
  if (object.is_dict()) fail("unhashable type: 'slice'");
  if (!object.is_string() && !(object.is_list() && !object.list->generator))
    fail("'" + type_name(object) + "' object is not subscriptable");
  for (const Value* part : {&start_v, &stop_v, &step_v})
    if (!part->is_none() && !part->is_integral())
      fail("slice indices must be integers or None or have an __index__ method");
  const auto as_index = [](const Value& v) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    return v.as_int();
  };
  const int64_t step = as_index(step_v).value_or(1);
  if (step == 0) fail("slice step cannot be zero");
  std::u32string cps;
  int64_t n;
  if (object.is_string()) {
    cps = to_code_points(object.s);
    n = int64_t(cps.size());
  } else {
    n = int64_t(object.list->items.size());
  }
  const int64_t lower = step < 0 ? -1 : 0, upper = step < 0 ? n - 1 : n;
  const auto clamp = [&](std::optional<int64_t> v, int64_t fallback) {
    if (!v) return fallback;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < lower) x = lower;
    } else if (x > upper) {
      x = upper;
    }
    return x;
  };
  const int64_t start = clamp(as_index(start_v), step < 0 ? upper : lower);
  const int64_t stop = clamp(as_index(stop_v), step < 0 ? lower : upper);
  std::vector<Value> items;
  std::u32string text;
  for (int64_t k = start; step > 0 ? k < stop : k > stop;) {
    if (object.is_string()) {
      text += cps[size_t(k)];
    } else {
      items.push_back(object.list->items[size_t(k)]);
    }
    if (__builtin_add_overflow(k, step, &k)) break;
  }
  if (object.is_string()) return Value::string(from_code_points(text));
  return Value::make_list(std::move(items), object.list->tuple);
}

Value binary_op(Context& ctx, const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return Value::boolean(equals(a, b));
  if (op == "!=") return Value::boolean(!equals(a, b));
  if (op == "<") return Value::boolean(less(a, b));
  if (op == ">") return Value::boolean(less(b, a));
  if (op == "<=") return Value::boolean(less(a, b) || equals(a, b));
  if (op == ">=") return Value::boolean(less(b, a) || equals(a, b));
  if (op == "in") return Value::boolean(contains(b, a));
  if (op == "not in") return Value::boolean(!contains(b, a));
  if (op == "~") {
    std::string out = to_str(a);
    out += to_str(b);
    ctx.check_size(out.size());
    return Value::string(std::move(out));
  }
  const bool numbers = a.is_number() && b.is_number();
  const bool ints = a.is_integral() && b.is_integral();
  if (op == "+") {
    if (ints) return Value::integer(int_op('+', a.as_int(), b.as_int()));
    if (numbers) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      ctx.check_size(a.s.size() + b.s.size());
      return Value::string(a.s + b.s);
    }
    if (a.is_list() && b.is_list() && a.list->tuple == b.list->tuple) {
      std::vector<Value> items = a.list->items;
      items.insert(items.end(), b.list->items.begin(), b.list->items.end());
      return Value::make_list(std::move(items), a.list->tuple);
    }
    unsupported(op, a, b);
  }
  if (op == "-") {
    if (ints) return Value::integer(int_op('-', a.as_int(), b.as_int()));
    if (numbers) return Value::number(a.as_double() - b.as_double());
    unsupported(op, a, b);
  }
  if (op == "*") {
    if (ints) return Value::integer(int_op('*', a.as_int(), b.as_int()));
    if (numbers) return Value::number(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_list()) && b.is_integral()) return repeat(ctx, a, b.as_int());
    if ((b.is_string() || b.is_list()) && a.is_integral()) return repeat(ctx, b, a.as_int());
    unsupported(op, a, b);
  }
  if (op == "/") {
    if (!numbers) unsupported(op, a, b);
    if (b.as_double() == 0) fail("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (op == "%" && a.is_string()) return Value::string(percent_format(a.s, b));
    if (!numbers) unsupported(op, a, b);
    if (ints) {
      const int64_t x = a.as_int(), y = b.as_int();
      if (y == 0) fail("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) fail("integer overflow");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return Value::integer(op == "//" ? q : m);
    }
    const double x = a.as_double(), y = b.as_double();
    if (y == 0) fail("float floor division by zero");
    if (op == "//") return Value::number(std::floor(x / y));
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    if (m == 0) m = std::copysign(0.0, y);
    return Value::number(m);
  }
  if (op == "**") {
    if (!numbers) unsupported(op, a, b);
    if (ints && b.as_int() >= 0) {
      int64_t result = 1, base = a.as_int();
      for (int64_t e = b.as_int(); e > 0; e >>= 1) {
        if (e & 1) result = int_op('*', result, base);
        if (e > 1) base = int_op('*', base, base);
      }
      return Value::integer(result);
    }
    if (a.as_double() == 0 && b.as_double() < 0) fail("0.0 cannot be raised to a negative power");
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  fail("unknown operator " + op);
}

bool apply_test(Context& ctx, const std::string& name, const Value& v, Args& args) {
  static const std::vector<std::string> one_argument = {
      "divisibleby", "equalto",     "eq", "==", "ne", "!=", "lt", "lessthan", "<",
      "gt",          "greaterthan", ">",  "le", "<=", "ge", ">=", "in",       "sameas"};
  const bool takes_one =
      std::find(one_argument.begin(), one_argument.end(), name) != one_argument.end();
  if (args.positional.size() + args.keywords.size() > (takes_one ? 1u : 0u))
    fail("test '" + name + "' takes " + (takes_one ? "one argument" : "no arguments"));
  if (takes_one && args.positional.size() + args.keywords.size() == 0)
    fail("test '" + name + "' needs an argument");
  const Value other = arg(args, 0, "other");
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind == Value::Kind::kBool;
  if (name == "true") return v.kind == Value::Kind::kBool && v.b;
  if (name == "false") return v.kind == Value::Kind::kBool && !v.b;
  if (name == "integer") return v.kind == Value::Kind::kInt;
  if (name == "float") return v.kind == Value::Kind::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict() && v.dict->flavor == DictData::Flavor::kDict;
  if (name == "iterable")
    return v.is_undefined() || v.is_string() || v.is_list() ||
           (v.is_dict() && v.dict->flavor == DictData::Flavor::kDict);
  if (name == "sequence")
    return v.is_undefined() || v.is_string() || v.is_list() ||
           (v.is_dict() && v.dict->flavor == DictData::Flavor::kDict);
  if (name == "callable") return v.kind == Value::Kind::kFunction;
  if (name == "escaped") return false;
  if (name == "odd" || name == "even") {
    // jinja2: value % 2 == 1 (odd) or == 0 (even), with Python's %.
    if (!v.is_number()) fail("unsupported operand type(s) for %: '" + type_name(v) + "' and 'int'");
    const Value rest = binary_op(ctx, "%", v, Value::integer(2));
    return equals(rest, Value::integer(name == "odd" ? 1 : 0));
  }
  if (name == "divisibleby") {
    const Value n = arg(args, 0, "num");
    if (!v.is_number() || !n.is_number()) fail("divisibleby needs numbers");
    if (v.is_integral() && n.is_integral()) {
      if (n.as_int() == 0) fail("integer division or modulo by zero");
      return v.as_int() % n.as_int() == 0;
    }
    if (n.as_double() == 0) fail("float modulo");
    return std::fmod(v.as_double(), n.as_double()) == 0;
  }
  if (name == "lower" || name == "upper") {  // str(value).islower() / .isupper()
    Args none;
    return string_method(ctx, to_str(v), name == "lower" ? "islower" : "isupper", none).truthy();
  }
  if (name == "equalto" || name == "eq" || name == "==") return equals(v, other);
  if (name == "ne" || name == "!=") return !equals(v, other);
  if (name == "lt" || name == "lessthan" || name == "<") return less(v, other);
  if (name == "gt" || name == "greaterthan" || name == ">") return less(other, v);
  if (name == "le" || name == "<=") return less(v, other) || equals(v, other);
  if (name == "ge" || name == ">=") return less(other, v) || equals(v, other);
  if (name == "in") return contains(arg(args, 0, "seq"), v);
  if (name == "sameas") {
    if (v.kind != other.kind) return false;
    if (v.is_list()) return v.list == other.list;
    if (v.is_dict()) return v.dict == other.dict;
    if (v.kind == Value::Kind::kFunction) return v.fn == other.fn;
    return equals(v, other);
  }
  fail("no test named '" + name + "'");
}

namespace {
Value filter_impl(Context& ctx, const std::string& name, Value v, Args& args);
}  // namespace

Value apply_filter(Context& ctx, const std::string& name, Value v, Args& args) {
  for (const Signature& signature : filter_signatures())
    if (name == signature.name) check_signature("filter '" + name + "'", signature.params, args);
  // jinja2's lazy filters return generators; reverse of a list or dict returns an iterator.
  const bool lazy = name == "select" || name == "reject" || name == "selectattr" ||
                    name == "rejectattr" || name == "map" || name == "unique" || name == "items" ||
                    (name == "reverse" && (v.is_dict() || (v.is_list() && !v.list->generator)));
  if (!lazy) return filter_impl(ctx, name, std::move(v), args);
  // Python runs a generator's body only when it is consumed: an error inside waits until then.
  try {
    Value result = filter_impl(ctx, name, std::move(v), args);
    if (result.is_list()) result.list->generator = true;
    return result;
  } catch (const Failure& failure) {
    Value deferred = Value::make_list();
    deferred.list->generator = true;
    deferred.list->deferred_error = failure.message;
    return deferred;
  }
}

namespace {
Value filter_impl(Context& ctx, const std::string& name, Value v, Args& args) {
  if ((name == "replace" && (!has_arg(args, 0, "old") || !has_arg(args, 1, "new"))) ||
      (name == "attr" && !has_arg(args, 0, "name")))
    fail("filter '" + name + "' is missing a required argument");
  if (name == "safe") return Value::string(to_str(v));  // Markup(value)
  if (name == "forceescape") return Value::string(html_escape(to_str(v)));
  if (name == "string") return Value::string(to_str(v));
  if (name == "default" || name == "d") {
    const bool boolean = arg(args, 1, "boolean", Value::boolean(false)).truthy();
    if (v.is_undefined() || (boolean && !v.truthy()))
      return arg(args, 0, "default_value", Value::string(""));
    return v;
  }
  if (name == "length" || name == "count") return Value::integer(length(v));
  if (name == "tojson") {
    JsonStyle style;
    style.ensure_ascii = arg(args, 0, "ensure_ascii", Value::boolean(false)).truthy();
    const Value indent = arg(args, 1, "indent");
    if (indent.is_string()) {
      style.indent_text = indent.s;
      style.indent = 0;
    } else if (indent.is_integral()) {
      style.indent = int(std::max<int64_t>(0, indent.as_int()));
    } else if (!indent.is_none()) {
      fail("tojson: indent must be an int or a string");
    }
    if (style.indent >= 0 || !style.indent_text.empty()) style.item_separator = ",";
    const Value separators = arg(args, 2, "separators");
    if (separators.is_list()) {
      if (separators.list->items.size() != 2) fail("tojson: separators must be a pair");
      style.item_separator = to_str(separators.list->items[0]);
      style.key_separator = to_str(separators.list->items[1]);
    }
    style.sort_keys = arg(args, 3, "sort_keys", Value::boolean(false)).truthy();
    std::string out = to_json(v, style);
    ctx.check_size(out.size());
    return Value::string(std::move(out));
  }
  if (name == "trim") return Value::string(strip(to_str(v), arg(args, 0, "chars"), true, true));
  if (name == "upper") return Value::string(str_upper(to_str(v)));
  if (name == "lower") return Value::string(str_lower(to_str(v)));
  if (name == "capitalize") return Value::string(str_capitalize(to_str(v)));
  if (name == "title") return Value::string(jinja_title(to_str(v)));
  if (name == "last" && v.is_list() && v.list->generator)
    fail("'generator' object is not reversible");
  if (name == "first" || name == "last") {
    std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined("No " + name + " item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    const std::string separator = to_str(arg(args, 0, "d", Value::string("")));
    const Value attribute = arg(args, 1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& item : iterate(v)) {
      if (!first) out += separator;
      first = false;
      out += to_str(attribute.is_none() ? item : attribute_path(ctx, item, attribute));
      ctx.check_size(out.size());
    }
    return Value::string(std::move(out));
  }
  if (name == "list") return Value::make_list(iterate(v));
  if (name == "items") {
    if (v.is_undefined()) return Value::make_list();
    if (!v.is_dict() || v.dict->flavor != DictData::Flavor::kDict)
      fail("Can only get item pairs from a mapping.");
    return items_of(v);
  }
  if ((name == "int" || name == "float") && v.is_undefined()) fail(v.s);
  if (name == "int")
    return to_int(v, arg(args, 0, "default", Value::integer(0)),
                  expect_int(arg(args, 1, "base", Value::integer(10)), "base"));
  if (name == "float") return to_float(v, arg(args, 0, "default", Value::number(0)));
  if (name == "abs") {
    if (!v.is_number()) fail("bad operand type for abs(): '" + type_name(v) + "'");
    if (v.kind == Value::Kind::kFloat) return Value::number(std::fabs(v.f));
    if (v.as_int() == INT64_MIN) fail("integer overflow");
    return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
  }
  if (name == "round") {
    const int64_t precision = expect_int(arg(args, 0, "precision", Value::integer(0)), "precision");
    const std::string method = to_str(arg(args, 1, "method", Value::string("common")));
    if (!v.is_number()) fail("round: a number is required, not " + type_name(v));
    if (method == "common") {
      if (v.is_integral() && precision >= 0) return Value::integer(v.as_int());
      return Value::number(py_round(v.as_double(), precision));
    }
    if (method != "ceil" && method != "floor") fail("method must be common, ceil or floor");
    const double scale = std::pow(10.0, double(precision));
    const double x = v.as_double() * scale;
    return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
  }
  if (name == "replace") {
    const Value count = arg(args, 2, "count");
    return Value::string(replace(ctx, to_str(v), to_str(arg(args, 0, "old")),
                                 to_str(arg(args, 1, "new")),
                                 count.is_none() ? -1 : expect_int(count, "count")));
  }
  if (name == "indent") {
    const Value width = arg(args, 0, "width", Value::integer(4));
    if (!width.is_string())
      ctx.check_size(size_t(std::max<int64_t>(0, expect_int(width, "width"))));
    const std::string indention =
        width.is_string()
            ? width.s
            : std::string(size_t(std::max<int64_t>(0, expect_int(width, "width"))), ' ');
    const bool first = arg(args, 1, "first", Value::boolean(false)).truthy();
    const bool blank = arg(args, 2, "blank", Value::boolean(false)).truthy();
    // jinja2 appends "\n" to the value itself: only strings can be indented.
    if (!v.is_string()) {
      if (v.is_undefined()) fail(v.s);
      fail("indent: expected a string, not " + type_name(v));
    }
    Args none;
    Value lines_value = string_method(ctx, to_str(v) + "\n", "splitlines", none);
    const auto& lines = lines_value.list->items;
    std::string out;
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k > 0) out += "\n";
      if (k > 0 && (blank || !lines[k].s.empty())) out += indention;
      out += lines[k].s;
      ctx.check_size(out.size());
    }
    if (first) out = indention + out;
    return Value::string(std::move(out));
  }
  if (name == "center") {
    const int64_t width = expect_int(arg(args, 0, "width", Value::integer(80)), "width");
    const std::string s = to_str(v);
    const int64_t n = int64_t(to_code_points(s).size());
    if (width <= n) return Value::string(s);
    ctx.check_size(size_t(width));
    const int64_t margin = width - n;
    const int64_t left = margin / 2 + (margin & width & 1);
    return Value::string(std::string(size_t(left), ' ') + s +
                         std::string(size_t(margin - left), ' '));
  }
  if (name == "wordcount") {
    const std::u32string cps = to_code_points(to_str(v));
    int64_t words = 0;
    bool in_word = false;
    for (char32_t c : cps) {
      const bool word = c == '_' || (c < 0x80 ? std::isalnum(int(c)) != 0
                                              : !is_py_space(c) && !(c >= 0x2000 && c <= 0x206F) &&
                                                    !(c >= 0x3000 && c <= 0x303F));
      if (word && !in_word) ++words;
      in_word = word;
    }
    return Value::integer(words);
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string cps = to_code_points(v.s);
      std::reverse(cps.begin(), cps.end());
      return Value::string(from_code_points(cps));
    }
    std::vector<Value> items = iterate(v);
    std::reverse(items.begin(), items.end());
    return Value::make_list(std::move(items));
  }
  if (name == "sort") return sorted(ctx, iterate(v), args, false);
  if (name == "dictsort") {
    if (!v.is_dict()) fail("dictsort: a mapping is required");
    const bool case_sensitive = arg(args, 0, "case_sensitive", Value::boolean(false)).truthy();
    const std::string by = to_str(arg(args, 1, "by", Value::string("key")));
    const bool reverse = arg(args, 2, "reverse", Value::boolean(false)).truthy();
    if (by != "key" && by != "value") fail("You can only sort by either \"key\" or \"value\"");
    std::vector<Value> pairs = items_of(v).list->items;
    const size_t index = by == "key" ? 0 : 1;
    std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& a, const Value& b) {
      const Value ka = sort_key(a.list->items[index], case_sensitive);
      const Value kb = sort_key(b.list->items[index], case_sensitive);
      return reverse ? less(kb, ka) : less(ka, kb);
    });
    return Value::make_list(std::move(pairs));
  }
  if (name == "unique") {
    const bool case_sensitive = arg(args, 0, "case_sensitive", Value::boolean(false)).truthy();
    const Value attribute = arg(args, 1, "attribute");
    std::vector<Value> out, seen;
    for (const Value& item : iterate(v)) {
      Value key = sort_key(attribute.is_none() ? item : attribute_path(ctx, item, attribute),
                           case_sensitive);
      if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); }))
        continue;
      seen.push_back(std::move(key));
      out.push_back(item);
    }
    return Value::make_list(std::move(out));
  }
  if (name == "min" || name == "max") {
    const bool case_sensitive = arg(args, 0, "case_sensitive", Value::boolean(false)).truthy();
    const Value attribute = arg(args, 1, "attribute");
    const std::vector<Value> items = iterate(v);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    size_t best = 0;
    Value best_key;
    for (size_t k = 0; k < items.size(); ++k) {
      Value key =
          sort_key(attribute.is_none() ? items[k] : attribute_path(ctx, items[k], attribute),
                   case_sensitive);
      if (k == 0 || (name == "min" ? less(key, best_key) : less(best_key, key))) {
        best = k;
        best_key = std::move(key);
      }
    }
    return items[best];
  }
  if (name == "sum") {
    const Value attribute = arg(args, 0, "attribute");
    Value total = arg(args, 1, "start", Value::integer(0));
    for (const Value& item : iterate(v))
      total = binary_op(ctx, "+", total,
                        attribute.is_none() ? item : attribute_path(ctx, item, attribute));
    return total;
  }
  if (name == "map") return map_filter(ctx, v, args);
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr")
    return select(ctx, name, v, args);
  if (name == "attr") return get_attr(ctx, v, to_str(arg(args, 0, "name")));
  if (name == "escape" || name == "e") return Value::string(html_escape(to_str(v)));
  if (name == "format") {
    Value values = Value::make_list(args.positional, true);
    if (!args.keywords.empty()) {
      values = Value::make_dict();
      for (auto& [key, item] : args.keywords) values.dict->set(key, item);
    }
    return Value::string(percent_format(to_str(v), values));
  }
  fail("no filter named '" + name + "'");
}

}  // namespace

}  // namespace kiln::jinja
