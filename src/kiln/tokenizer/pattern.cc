#include "kiln/tokenizer/pattern.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {

Pattern Pattern::literal(std::string text) {
  Pattern pattern;
  pattern.literal_ = std::move(text);
  return pattern;
}

Pattern Pattern::regex(std::string_view expression, const std::string& where) {
  Pattern pattern;
  pattern.regex_ = std::make_shared<const Regex>(expression, where);
  return pattern;
}

Pattern Pattern::from_json(const Json& spec, const std::string& where) {
  if (has_field(spec, "String")) return literal(string_field(spec, "String", where));
  if (has_field(spec, "Regex")) {
    return regex(string_field(spec, "Regex", where), child_where(where, "Regex"));
  }
  throw Error(where + ": expected {\"String\": ...} or {\"Regex\": ...}");
}

void Pattern::find_matches(std::string_view text, std::vector<PatternSpan>& spans) const {
  spans.clear();
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return;
  }
  size_t previous_end = 0;
  const auto add_match = [&](size_t begin, size_t end) {
    if (begin != previous_end) spans.push_back({previous_end, begin, false});
    spans.push_back({begin, end, true});
    previous_end = end;
  };
  if (regex_) {
    size_t from = 0, begin, end;
    while (from <= text.size() && regex_->find(text, from, begin, end)) {
      add_match(begin, end);
      if (end > begin) {
        from = end;
      } else if (end < text.size()) {
        from = end + utf8_sequence_length(static_cast<unsigned char>(text[end]));
      } else {
        break;
      }
    }
  } else if (!literal_.empty()) {
    for (size_t at = text.find(literal_); at != std::string_view::npos;
         at = text.find(literal_, at + literal_.size())) {
      add_match(at, at + literal_.size());
    }
  }
  if (previous_end != text.size()) spans.push_back({previous_end, text.size(), false});
}

void Pattern::replace_all(std::string_view text, std::string_view replacement,
                          std::string& out) const {
  if (!regex_) {
    if (literal_.empty()) {
      out.append(text);
      return;
    }
    size_t from = 0;
    for (size_t at = text.find(literal_); at != std::string_view::npos;
         at = text.find(literal_, from)) {
      out.append(text.substr(from, at - from));
      out.append(replacement);
      from = at + literal_.size();
    }
    out.append(text.substr(from));
    return;
  }
  std::vector<PatternSpan> spans;
  find_matches(text, spans);
  for (const PatternSpan& span : spans) {
    if (span.is_match) {
      out.append(replacement);
    } else {
      out.append(text.substr(span.begin, span.end - span.begin));
    }
  }
}

}  // namespace kiln::tok
