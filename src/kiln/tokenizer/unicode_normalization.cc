#include "kiln/tokenizer/unicode_normalization.h"

#include <algorithm>
#include <vector>

#include "kiln/tokenizer/regex.h"
#include "kiln/tokenizer/unicode_tables.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

namespace data = unicode_data;

// Hangul syllable arithmetic (Unicode chapter 3.12).
constexpr char32_t kHangulBase = 0xAC00, kLeadBase = 0x1100, kVowelBase = 0x1161,
                   kTrailBase = 0x11A7;
constexpr char32_t kLeadCount = 19, kVowelCount = 21, kTrailCount = 28;
constexpr char32_t kSyllableCount = kLeadCount * kVowelCount * kTrailCount;

uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* end = data::combining_classes + data::combining_classes_size;
  const auto* it =
      std::lower_bound(data::combining_classes, end, cp,
                       [](const auto& entry, char32_t c) { return entry.code_point < c; });
  return it != end && it->code_point == cp ? it->value : 0;
}

const data::Mapping* find_mapping(const data::Mapping* table, size_t size, char32_t cp) {
  const auto* end = table + size;
  const auto* it = std::lower_bound(
      table, end, cp, [](const auto& entry, char32_t c) { return entry.code_point < c; });
  return it != end && it->code_point == cp ? it : nullptr;
}

void decompose(char32_t cp, bool compatibility, std::vector<char32_t>& out) {
  if (cp < 0xC0) {
    if (!compatibility || cp < 0xA0) {
      out.push_back(cp);
      return;
    }
  }
  if (cp >= kHangulBase && cp < kHangulBase + kSyllableCount) {
    const char32_t index = cp - kHangulBase;
    out.push_back(kLeadBase + index / (kVowelCount * kTrailCount));
    out.push_back(kVowelBase + (index % (kVowelCount * kTrailCount)) / kTrailCount);
    if (index % kTrailCount != 0) out.push_back(kTrailBase + index % kTrailCount);
    return;
  }
  const data::Mapping* mapping =
      find_mapping(data::canonical_decompositions, data::canonical_decompositions_size, cp);
  const char32_t* pool = data::canonical_decompositions_pool;
  if (mapping == nullptr && compatibility) {
    mapping = find_mapping(data::compatibility_decompositions,
                           data::compatibility_decompositions_size, cp);
    pool = data::compatibility_decompositions_pool;
  }
  if (mapping == nullptr) {
    out.push_back(cp);
    return;
  }
  for (uint32_t i = 0; i < mapping->length; ++i) {
    decompose(pool[mapping->offset + i], compatibility, out);
  }
}

// The primary composite of `first` + `second`, or 0.
char32_t compose_pair(char32_t first, char32_t second) {
  if (first >= kLeadBase && first < kLeadBase + kLeadCount && second >= kVowelBase &&
      second < kVowelBase + kVowelCount) {
    return kHangulBase + ((first - kLeadBase) * kVowelCount + (second - kVowelBase)) * kTrailCount;
  }
  if (first >= kHangulBase && first < kHangulBase + kSyllableCount &&
      (first - kHangulBase) % kTrailCount == 0 && second > kTrailBase &&
      second < kTrailBase + kTrailCount) {
    return first + (second - kTrailBase);
  }
  const auto* end = data::composites + data::composites_size;
  const auto* it =
      std::lower_bound(data::composites, end, std::pair{first, second},
                       [](const data::Composite& c, std::pair<char32_t, char32_t> key) {
                         return c.first != key.first ? c.first < key.first : c.second < key.second;
                       });
  return it != end && it->first == first && it->second == second ? it->composite : 0;
}

void compose(std::vector<char32_t>& chars) {
  size_t out = 0;
  std::ptrdiff_t starter = -1;
  for (size_t i = 0; i < chars.size(); ++i) {
    const char32_t c = chars[i];
    const uint8_t cc = combining_class(c);
    if (starter >= 0) {
      const bool adjacent = static_cast<std::ptrdiff_t>(out) == starter + 1;
      const uint8_t previous_cc = adjacent ? 0 : combining_class(chars[out - 1]);
      const bool blocked = !adjacent && (previous_cc == 0 || previous_cc >= cc);
      if (!blocked) {
        if (const char32_t composite = compose_pair(chars[starter], c)) {
          chars[starter] = composite;
          continue;
        }
      }
    }
    if (cc == 0) starter = static_cast<std::ptrdiff_t>(out);
    chars[out++] = c;
  }
  chars.resize(out);
}

// Stable sort of each run of non-starters by combining class.
void canonical_order(std::vector<char32_t>& chars) {
  for (size_t i = 0; i < chars.size();) {
    if (combining_class(chars[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < chars.size() && combining_class(chars[end]) != 0) ++end;
    std::stable_sort(chars.begin() + i, chars.begin() + end, [](char32_t a, char32_t b) {
      return combining_class(a) < combining_class(b);
    });
    i = end;
  }
}

bool is_ascii(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

}  // namespace

std::string normalize_unicode(std::string_view text, NormalForm form) {
  if (is_ascii(text)) return std::string(text);
  const bool compatibility = form == NormalForm::kNFKC || form == NormalForm::kNFKD;
  std::vector<char32_t> chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();)
    decompose(next_code_point(text, pos), compatibility, chars);
  canonical_order(chars);
  if (form == NormalForm::kNFC || form == NormalForm::kNFKC) compose(chars);
  std::string out;
  out.reserve(text.size());
  for (char32_t c : chars) append_utf8(out, c);
  return out;
}

std::string to_lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  static const Regex letter(R"(^\p{L})", "lowercase");
  size_t begin, end;
  for (size_t pos = 0; pos < text.size();) {
    const size_t start = pos;
    const char32_t cp = next_code_point(text, pos);
    if (cp < 0x80) {
      out += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
      continue;
    }
    if (cp == 0x3A3) {  // capital sigma: final form after a letter and not before one
      const bool after_letter = start > 0 && !out.empty() && [&] {
        size_t back = start - 1;
        while (back > 0 && (static_cast<unsigned char>(text[back]) & 0xC0) == 0x80) --back;
        return letter.find(text.substr(back, start - back), 0, begin, end);
      }();
      const bool before_letter = pos < text.size() && letter.find(text.substr(pos), 0, begin, end);
      append_utf8(out, after_letter && !before_letter ? 0x3C2 : 0x3C3);
      continue;
    }
    const data::Mapping* mapping =
        find_mapping(data::lowercase_mappings, data::lowercase_mappings_size, cp);
    if (mapping == nullptr) {
      out.append(text.substr(start, pos - start));
      continue;
    }
    for (uint32_t i = 0; i < mapping->length; ++i) {
      append_utf8(out, data::lowercase_mappings_pool[mapping->offset + i]);
    }
  }
  return out;
}

}  // namespace kiln::tok
