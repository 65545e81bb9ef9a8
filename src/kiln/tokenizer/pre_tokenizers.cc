#include "kiln/tokenizer/pre_tokenizers.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/byte_level.h"
#include "kiln/tokenizer/pattern.h"

namespace kiln::tok {
namespace {

// GPT-2's pre-tokenization regex (ByteLevel with use_regex).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// How the matches of a Split pattern join the pieces around them (HF's
// SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  throw Error(where + ": unknown split behavior '" + name + "'");
}

// Applies `behavior` to the spans of one piece and appends the resulting non-empty pieces.
void emit_split(std::string_view text, const std::vector<PatternSpan>& spans,
                SplitBehavior behavior, std::vector<std::string>& out) {
  const auto emit = [&](size_t begin, size_t end) {
    if (end > begin) out.emplace_back(text.substr(begin, end - begin));
  };
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const PatternSpan& s : spans) {
        if (!s.is_match) emit(s.begin, s.end);
      }
      return;
    case SplitBehavior::kIsolated:
      for (const PatternSpan& s : spans) emit(s.begin, s.end);
      return;
    case SplitBehavior::kMergedWithPrevious:
    case SplitBehavior::kContiguous: {
      // A span joins the previous one when it is a match following a non-match
      // (MergedWithPrevious) or has the same kind as the previous one (Contiguous).
      size_t begin = 0, end = 0;
      bool have = false, previous_match = false;
      for (const PatternSpan& s : spans) {
        const bool join = behavior == SplitBehavior::kMergedWithPrevious
                              ? (s.is_match && !previous_match)
                              : (s.is_match == previous_match);
        if (join && have) {
          end = s.end;
        } else {
          if (have) emit(begin, end);
          begin = s.begin;
          end = s.end;
          have = true;
        }
        previous_match = s.is_match;
      }
      if (have) emit(begin, end);
      return;
    }
    case SplitBehavior::kMergedWithNext: {
      // Walk backwards: a match followed by a non-match joins that non-match.
      std::vector<std::pair<size_t, size_t>> reversed;
      bool previous_match = false;
      for (size_t i = spans.size(); i-- > 0;) {
        const PatternSpan& s = spans[i];
        if (s.is_match && !previous_match && !reversed.empty()) {
          reversed.back().first = s.begin;
        } else {
          reversed.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      for (size_t i = reversed.size(); i-- > 0;) emit(reversed[i].first, reversed[i].second);
      return;
    }
  }
}

// Splits every piece with `pattern` and `behavior`; `invert` swaps matches and gaps.
void split_pieces(std::vector<std::string>& pieces, const Pattern& pattern, SplitBehavior behavior,
                  bool invert) {
  std::vector<std::string> out;
  out.reserve(pieces.size() * 4);
  thread_local std::vector<PatternSpan> spans;
  for (const std::string& piece : pieces) {
    pattern.find_matches(piece, spans);
    if (invert) {
      for (PatternSpan& s : spans) s.is_match = !s.is_match;
    }
    emit_split(piece, spans, behavior, out);
  }
  pieces = std::move(out);
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<std::string>& pieces, bool starts_text) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces, starts_text);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<std::string>& pieces, bool) const override {
    split_pieces(pieces, pattern_, behavior_, invert_);
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// GPT-2's byte-level step: optionally a leading space, optionally the GPT-2 regex split, then
// every byte replaced by its printable stand-in.
class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::make_unique<Pattern>(Pattern::regex(kGpt2Pattern, "ByteLevel"))
                         : nullptr) {}
  void pre_tokenize(std::vector<std::string>& pieces, bool) const override {
    if (add_prefix_space_) {
      for (std::string& piece : pieces) {
        if (!piece.starts_with(' ')) piece = ' ' + piece;
      }
    }
    if (regex_) split_pieces(pieces, *regex_, SplitBehavior::kIsolated, false);
    std::string mapped;
    for (std::string& piece : pieces) {
      mapped.clear();
      append_byte_level(mapped, piece);
      piece.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Pattern> regex_;
};

// SentencePiece-style spaces: ' ' becomes the replacement ('▁'), which is prepended to the
// text (always, or only at the start of the input), then each '▁' starts a new piece.
class MetaspacePreTokenizer : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)),
        prepend_(prepend),
        split_(split),
        pattern_(Pattern::literal(replacement_)) {}
  void pre_tokenize(std::vector<std::string>& pieces, bool starts_text) const override {
    std::string replaced;
    for (size_t i = 0; i < pieces.size(); ++i) {
      replaced.clear();
      Pattern::literal(" ").replace_all(pieces[i], replacement_, replaced);
      const bool prepend =
          prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && i == 0 && starts_text);
      if (prepend && !replaced.starts_with(replacement_)) replaced = replacement_ + replaced;
      pieces[i].swap(replaced);
    }
    if (split_) split_pieces(pieces, pattern_, SplitBehavior::kMergedWithNext, false);
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
  Pattern pattern_;
};

// Rust's \w (Unicode word characters), for the Whitespace pre-tokenizer.
constexpr std::string_view kWordClass = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D})";
// ASCII punctuation and Unicode punctuation (P*), one character per match.
constexpr std::string_view kPunctuation = R"([\p{P}!-/:-@\[-`{-~])";

std::unique_ptr<PreTokenizer> regex_split(std::string_view regex, SplitBehavior behavior,
                                          bool invert, const std::string& where) {
  return std::make_unique<SplitPreTokenizer>(Pattern::regex(regex, where), behavior, invert);
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& spec, const std::string& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = type_field(spec, where);
  if (type == "Sequence") {
    const std::string list_where = child_where(where, "pretokenizers");
    const Json& list = required_field(spec, "pretokenizers", where);
    if (!list.is_array()) throw Error(list_where + ": expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = make_pre_tokenizer(list[i], child_where(list_where, i));
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(
        Pattern::from_json(required_field(spec, "pattern", where), child_where(where, "pattern")),
        parse_behavior(string_field(spec, "behavior", where), child_where(where, "behavior")),
        bool_field_or(spec, "invert", where, false));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(
        bool_field_or(spec, "add_prefix_space", where, true),
        bool_field_or(spec, "use_regex", where, true));
  }
  if (type == "Metaspace") {
    MetaspacePreTokenizer::Prepend prepend = MetaspacePreTokenizer::Prepend::kAlways;
    if (has_field(spec, "prepend_scheme")) {
      const std::string scheme = string_field(spec, "prepend_scheme", where);
      if (scheme == "first")
        prepend = MetaspacePreTokenizer::Prepend::kFirst;
      else if (scheme == "never")
        prepend = MetaspacePreTokenizer::Prepend::kNever;
      else if (scheme != "always") {
        throw Error(child_where(where, "prepend_scheme") + ": unknown scheme '" + scheme + "'");
      }
    } else if (!bool_field_or(spec, "add_prefix_space", where, true)) {
      prepend = MetaspacePreTokenizer::Prepend::kNever;
    }
    return std::make_unique<MetaspacePreTokenizer>(
        string_field_or(spec, "replacement", where, "\u2581"), prepend,
        bool_field_or(spec, "split", where, true));
  }
  if (type == "Whitespace") {
    const std::string word(kWordClass);
    return regex_split("[" + word + "]+|[^" + word + "\\s]+", SplitBehavior::kRemoved, true, where);
  }
  if (type == "WhitespaceSplit") return regex_split("\\s+", SplitBehavior::kRemoved, false, where);
  if (type == "Punctuation") {
    return regex_split(kPunctuation,
                       parse_behavior(string_field_or(spec, "behavior", where, "Isolated"),
                                      child_where(where, "behavior")),
                       false, where);
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    steps.push_back(regex_split("\\s+", SplitBehavior::kRemoved, false, where));
    steps.push_back(regex_split(kPunctuation, SplitBehavior::kIsolated, false, where));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Digits") {
    return regex_split("\\p{N}",
                       bool_field_or(spec, "individual_digits", where, false)
                           ? SplitBehavior::kIsolated
                           : SplitBehavior::kContiguous,
                       false, where);
  }
  if (type == "CharDelimiterSplit") {
    return std::make_unique<SplitPreTokenizer>(
        Pattern::literal(string_field(spec, "delimiter", where)), SplitBehavior::kRemoved, false);
  }
  throw Error(child_where(where, "type") + ": unsupported pre-tokenizer '" + type + "'");
}

}  // namespace kiln::tok
