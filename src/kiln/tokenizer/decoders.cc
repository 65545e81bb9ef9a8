#include "kiln/tokenizer/decoders.h"

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/byte_level.h"
#include "kiln/tokenizer/pattern.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Maps byte-level characters back to bytes and joins everything into one lossy UTF-8 string.
// A token with a character outside the alphabet (an added token) keeps its own bytes.
class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      const size_t start = bytes.size();
      for (size_t pos = 0; pos < token.size();) {
        const int byte = byte_level_byte(next_code_point(token, pos));
        if (byte < 0) {
          bytes.resize(start);
          bytes += token;
          break;
        }
        bytes += static_cast<char>(byte);
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string out;
    for (std::string& token : tokens) {
      out.clear();
      pattern_.replace_all(token, content_, out);
      token.swap(out);
    }
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// Runs of "<0xXX>" tokens become the text of their bytes; an invalid run becomes one U+FFFD
// per byte, as HF does.
class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    const auto flush = [&] {
      if (run.empty()) return;
      if (utf8_valid_prefix(run) == run.size()) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
    };
    for (std::string& token : tokens) {
      const int byte = parse_byte_token(token);
      if (byte >= 0) {
        run += static_cast<char>(byte);
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // The byte of a "<0xXX>" token, or -1.
  static int parse_byte_token(const std::string& token) {
    if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return -1;
    const int high = hex_digit(token[3]), low = hex_digit(token[4]);
    return high < 0 || low < 0 ? -1 : high * 16 + low;
  }
};

// Joins all tokens into one.
class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (content_.empty()) return;
    for (std::string& token : tokens) {
      size_t begin = 0, end = token.size();
      for (size_t i = 0; i < start_ && token.compare(begin, content_.size(), content_) == 0; ++i) {
        begin += content_.size();
      }
      for (size_t i = 0; i < stop_ && end >= begin + content_.size() &&
                         token.compare(end - content_.size(), content_.size(), content_) == 0;
           ++i) {
        end -= content_.size();
      }
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_;
  size_t stop_;
};

// Metaspace: '▁' becomes ' ', except in the first token, where it is dropped (unless the
// prepend scheme is "never").
class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      out.clear();
      Pattern::literal(replacement_).replace_all(tokens[i], i == 0 && strip_first_ ? "" : " ", out);
      tokens[i].swap(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

// WordPiece: pieces after the first lose their prefix ("##") or get a leading space; with
// cleanup, spaces before punctuation and in contractions are removed.
class WordPieceDecoder : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& token = tokens[i];
      if (i > 0) {
        if (!prefix_.empty() && token.starts_with(prefix_)) {
          token.erase(0, prefix_.size());
        } else {
          token = " " + token;
        }
      }
      if (cleanup_) token = cleanup(token);
    }
  }

  // HF's cleanup of tokenization spaces.
  static std::string cleanup(const std::string& text) {
    static const std::pair<const char*, const char*> kRules[] = {
        {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
        {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
        {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    std::string out = text;
    for (const auto& [from, to] : kRules) {
      std::string replaced;
      Pattern::literal(from).replace_all(out, to, replaced);
      out.swap(replaced);
    }
    return out;
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

// BPEDecoder: the end-of-word suffix ("</w>") becomes a space, or nothing in the last token.
class BpeSuffixDecoder : public Decoder {
 public:
  explicit BpeSuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      out.clear();
      Pattern::literal(suffix_).replace_all(tokens[i], i + 1 == tokens.size() ? "" : " ", out);
      tokens[i].swap(out);
    }
  }

 private:
  std::string suffix_;
};

std::vector<std::unique_ptr<Decoder>> make_decoder_list(const Json& spec,
                                                        const std::string& where) {
  const std::string list_where = child_where(where, "decoders");
  const Json& list = required_field(spec, "decoders", where);
  if (!list.is_array()) throw Error(list_where + ": expected an array");
  std::vector<std::unique_ptr<Decoder>> steps;
  for (size_t i = 0; i < list.size(); ++i) {
    auto step = make_decoder(list[i], child_where(list_where, i));
    if (step) steps.push_back(std::move(step));
  }
  return steps;
}

size_t count_field(const Json& spec, std::string_view key, const std::string& where) {
  const int64_t value = has_field(spec, key) ? int_field(spec, key, where) : 0;
  if (value < 0) throw Error(child_where(where, key) + ": must not be negative");
  return static_cast<size_t>(value);
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Json& spec, const std::string& where) {
  if (spec.is_null()) return nullptr;
  const std::string type = type_field(spec, where);
  if (type == "Sequence") {
    return std::make_unique<SequenceDecoder>(make_decoder_list(spec, where));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Replace") {
    return std::make_unique<ReplaceDecoder>(
        Pattern::from_json(required_field(spec, "pattern", where), child_where(where, "pattern")),
        string_field(spec, "content", where));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(string_field(spec, "content", where),
                                          count_field(spec, "start", where),
                                          count_field(spec, "stop", where));
  }
  if (type == "Metaspace") {
    const bool never = string_field_or(spec, "prepend_scheme", where, "always") == "never" ||
                       !bool_field_or(spec, "add_prefix_space", where, true);
    return std::make_unique<MetaspaceDecoder>(string_field_or(spec, "replacement", where, "\u2581"),
                                              !never);
  }
  if (type == "WordPiece") {
    return std::make_unique<WordPieceDecoder>(string_field_or(spec, "prefix", where, "##"),
                                              bool_field_or(spec, "cleanup", where, true));
  }
  if (type == "BPEDecoder") {
    return std::make_unique<BpeSuffixDecoder>(string_field_or(spec, "suffix", where, "</w>"));
  }
  throw Error(child_where(where, "type") + ": unsupported decoder '" + type + "'");
}

}  // namespace kiln::tok
