#include "kiln/tokenizer/normalizers.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/tokenizer/pattern.h"
#include "kiln/tokenizer/unicode_normalization.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size() + text.size() / 4);
    pattern_.replace_all(text, content_, out);
    text = std::move(out);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Prepends a string to non-empty text.
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class UnicodeFormNormalizer : public Normalizer {
 public:
  explicit UnicodeFormNormalizer(NormalForm form) : form_(form) {}
  void normalize(std::string& text) const override { text = normalize_unicode(text, form_); }

 private:
  NormalForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = to_lowercase(text); }
};

// True when the single character `character` matches `regex` (a one-character class).
bool character_in(const Regex& regex, std::string_view character) {
  size_t begin, end;
  return regex.find(character, 0, begin, end);
}

// Rewrites each character: `rewrite(cp, character, out)` appends its replacement.
template <class Rewrite>
void rewrite_characters(std::string& text, Rewrite&& rewrite) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    const char32_t cp = next_code_point(text, pos);
    rewrite(cp, std::string_view(text).substr(start, pos - start), out);
  }
  text = std::move(out);
}

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Removes nonspacing marks (HF's StripAccents; meant to follow NFD).
void strip_accents(std::string& text) {
  static const Regex mark(R"(^\p{Mn})", "StripAccents");
  rewrite_characters(text, [&](char32_t cp, std::string_view character, std::string& out) {
    if (cp < 0x300 || !character_in(mark, character)) out.append(character);
  });
}

class StripAccentsNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override { strip_accents(text); }
};

// Trims Unicode white space on the left and/or right.
class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_) {
      for (size_t pos = 0; pos < end;) {
        if (!is_white_space(next_code_point(text, pos))) break;
        begin = pos;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
        size_t cursor = start;
        if (!is_white_space(next_code_point(text, cursor))) break;
        end = start;
      }
    }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

// BERT's normalizer: drop control characters, map white space to ' ', pad CJK ideographs
// with spaces, strip accents, lowercase.
class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool handle_chinese_chars, bool strip_accents, bool lowercase)
      : clean_text_(clean_text),
        handle_chinese_chars_(handle_chinese_chars),
        strip_accents_(strip_accents),
        lowercase_(lowercase) {}
  void normalize(std::string& text) const override {
    static const Regex control(R"(^[\p{Cc}\p{Cf}\p{Cn}\p{Co}])", "BertNormalizer");
    static const Regex space_separator(R"(^\p{Zs})", "BertNormalizer");
    if (clean_text_) {
      rewrite_characters(text, [&](char32_t cp, std::string_view character, std::string& out) {
        if (cp == 0 || cp == 0xFFFD) return;
        const bool whitespace = cp == '\t' || cp == '\n' || cp == '\r' || cp == ' ' ||
                                character_in(space_separator, character);
        if (whitespace) {
          out += ' ';
        } else if (!character_in(control, character)) {
          out.append(character);
        }
      });
    }
    if (handle_chinese_chars_) {
      rewrite_characters(text, [](char32_t cp, std::string_view character, std::string& out) {
        const bool cjk = (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
                         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
                         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
                         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
        if (cjk) out += ' ';
        out.append(character);
        if (cjk) out += ' ';
      });
    }
    if (strip_accents_) {
      text = normalize_unicode(text, NormalForm::kNFD);
      strip_accents(text);
    }
    if (lowercase_) text = to_lowercase(text);
  }

 private:
  bool clean_text_, handle_chinese_chars_, strip_accents_, lowercase_;
};

// SentencePiece's NMT normalization: drop some control characters, map others to ' '.
class NmtNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    rewrite_characters(text, [](char32_t cp, std::string_view character, std::string& out) {
      const bool dropped = (cp >= 0x1 && cp <= 0x8) || cp == 0xB || (cp >= 0xE && cp <= 0x1F) ||
                           cp == 0x7F || cp == 0x8F || cp == 0x9F;
      const bool to_space = cp == 0x9 || cp == 0xA || cp == 0xC || cp == 0xD || cp == 0x1680 ||
                            (cp >= 0x200B && cp <= 0x200F) || cp == 0x2028 || cp == 0x2029 ||
                            cp == 0x2581 || cp == 0xFEFF || cp == 0xFFFD;
      if (to_space) {
        out += ' ';
      } else if (!dropped) {
        out.append(character);
      }
    });
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& spec, const std::string& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = type_field(spec, where);
  if (type == "Sequence") {
    const Json& list = required_field(spec, "normalizers", where);
    if (!list.is_array()) throw Error(child_where(where, "normalizers") + ": expected an array");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = make_normalizer(list[i], child_where(child_where(where, "normalizers"), i));
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(
        Pattern::from_json(required_field(spec, "pattern", where), child_where(where, "pattern")),
        string_field(spec, "content", where));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(string_field(spec, "prepend", where));
  }
  if (type == "NFC") return std::make_unique<UnicodeFormNormalizer>(NormalForm::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeFormNormalizer>(NormalForm::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeFormNormalizer>(NormalForm::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeFormNormalizer>(NormalForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Nmt") return std::make_unique<NmtNormalizer>();
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(bool_field_or(spec, "strip_left", where, true),
                                             bool_field_or(spec, "strip_right", where, true));
  }
  if (type == "BertNormalizer") {
    const bool lowercase = bool_field_or(spec, "lowercase", where, true);
    return std::make_unique<BertNormalizer>(
        bool_field_or(spec, "clean_text", where, true),
        bool_field_or(spec, "handle_chinese_chars", where, true),
        bool_field_or(spec, "strip_accents", where, lowercase), lowercase);
  }
  throw Error(child_where(where, "type") + ": unsupported normalizer '" + type + "'");
}

}  // namespace kiln::tok
