#include "kiln/tokenizer/tiktoken_tokenizer.h"

#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/json.h"
#include "kiln/io/whole_file.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

constexpr int32_t kNoRank = std::numeric_limits<int32_t>::max();

// Decodes standard base64 (with optional '=' padding); returns false on bad input.
bool decode_base64(std::string_view text, std::string& out) {
  out.clear();
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    int value;
    if (c >= 'A' && c <= 'Z')
      value = c - 'A';
    else if (c >= 'a' && c <= 'z')
      value = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      value = c - '0' + 52;
    else if (c == '+')
      value = 62;
    else if (c == '/')
      value = 63;
    else if (c == '=')
      break;
    else
      return false;
    buffer = (buffer << 6) | static_cast<uint32_t>(value);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buffer >> bits) & 0xFF);
    }
  }
  return true;
}

}  // namespace

TiktokenTokenizer::TiktokenTokenizer(std::string pattern, const std::string& where)
    : regex_(pattern, where) {}

std::unique_ptr<TiktokenTokenizer> TiktokenTokenizer::load(const std::string& json_path,
                                                           const std::string& rank_path) {
  const Json spec = read_json_file(json_path);
  const std::string where = json_path + ": ";
  std::unique_ptr<TiktokenTokenizer> tokenizer(
      new TiktokenTokenizer(string_field(spec, "pat_str", where), where + "pat_str"));
  std::string ranks_file = rank_path;
  if (ranks_file.empty()) {
    ranks_file =
        (std::filesystem::path(json_path).parent_path() / string_field(spec, "rank_file", where))
            .string();
  }
  const std::string text = read_whole_file(ranks_file);
  std::string bytes;
  size_t line_number = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line = std::string_view(text).substr(pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    const std::string line_where = ranks_file + ": line " + std::to_string(line_number);
    if (space == std::string_view::npos || !decode_base64(line.substr(0, space), bytes)) {
      throw Error(line_where + ": expected '<base64> <rank>'");
    }
    int64_t rank = 0;
    const std::string_view digits = line.substr(space + 1);
    for (char c : digits) {
      if (c < '0' || c > '9' || rank > kNoRank / 10) throw Error(line_where + ": bad rank");
      rank = rank * 10 + (c - '0');
    }
    if (digits.empty() || rank >= kNoRank) throw Error(line_where + ": bad rank");
    if (!tokenizer->ranks_.emplace(bytes, static_cast<int32_t>(rank)).second) {
      throw Error(line_where + ": token listed twice");
    }
    if (static_cast<size_t>(rank) >= tokenizer->tokens_.size()) tokenizer->tokens_.resize(rank + 1);
    tokenizer->tokens_[rank] = bytes;
  }
  if (has_field(spec, "special_tokens")) {
    const Json& specials = spec["special_tokens"];
    if (!specials.is_object()) throw Error(where + "special_tokens: expected an object");
    for (auto it = specials.begin(); it != specials.end(); ++it) {
      const std::string key_where = where + "special_tokens." + it.key();
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
          it.value().get<int64_t>() > INT32_MAX || it.key().empty()) {
        throw Error(key_where + ": expected a non-negative id");
      }
      check_utf8(it.key(), key_where);
      AddedToken token;
      token.id = it.value().get<int32_t>();
      token.content = it.key();
      token.special = true;
      tokenizer->specials_.add(std::move(token));
    }
  }
  return tokenizer;
}

void TiktokenTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  if (const auto it = ranks_.find(piece); it != ranks_.end()) {
    ids.push_back(it->second);
    return;
  }
  // parts[i] = (start byte, rank of the pair of parts starting at i); merge the lowest rank,
  // leftmost first, as tiktoken does.
  thread_local std::vector<std::pair<size_t, int32_t>> parts;
  parts.clear();
  const auto rank_of = [&](size_t begin, size_t end) {
    const auto it = ranks_.find(piece.substr(begin, end - begin));
    return it == ranks_.end() ? kNoRank : it->second;
  };
  for (size_t i = 0; i + 1 < piece.size(); ++i) parts.emplace_back(i, rank_of(i, i + 2));
  parts.emplace_back(piece.size() - 1, kNoRank);
  parts.emplace_back(piece.size(), kNoRank);
  const auto pair_rank = [&](size_t i) {
    return i + 3 < parts.size() ? rank_of(parts[i].first, parts[i + 3].first) : kNoRank;
  };
  while (true) {
    size_t best = 0;
    int32_t best_rank = kNoRank;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      if (parts[i].second < best_rank) {
        best_rank = parts[i].second;
        best = i;
      }
    }
    if (best_rank == kNoRank) break;
    if (best > 0) parts[best - 1].second = pair_rank(best - 1);
    parts[best].second = pair_rank(best);
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const int32_t rank = rank_of(parts[i].first, parts[i + 1].first);
    if (rank == kNoRank) {
      throw Error("tiktoken: byte sequence without a rank (the rank file lacks single bytes)");
    }
    ids.push_back(rank);
  }
}

void TiktokenTokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const {
  size_t from = 0, begin, end;
  while (from < text.size() && regex_.find(text, from, begin, end)) {
    if (end == begin) {
      from = end + utf8_sequence_length(static_cast<unsigned char>(text[end]));
      continue;
    }
    encode_piece(text.substr(begin, end - begin), ids);
    from = end;
  }
}

std::vector<int32_t> TiktokenTokenizer::encode(std::string_view text, bool add_special) const {
  check_utf8(text, "text to encode");
  std::vector<int32_t> ids;
  if (!add_special) {
    encode_ordinary(text, ids);
    return ids;
  }
  std::vector<TextSegment> segments;
  specials_.split(text, /*normalized=*/false, segments);
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else {
      encode_ordinary(text.substr(segment.begin, segment.end - segment.begin), ids);
    }
  }
  return ids;
}

std::string TiktokenTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (const AddedToken* special = specials_.find(id)) {
      if (!skip_special) bytes += special->content;
      continue;
    }
    if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || tokens_[id].empty()) {
      throw Error("decode: token id " + std::to_string(id) + " is outside the vocabulary (size " +
                  std::to_string(vocab_size()) + ")");
    }
    bytes += tokens_[id];
  }
  return utf8_lossy(bytes);
}

int64_t TiktokenTokenizer::vocab_size() const {
  return std::max(static_cast<int64_t>(tokens_.size()), specials_.id_limit());
}

std::optional<std::string> TiktokenTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* special = specials_.find(id)) return special->content;
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || tokens_[id].empty()) {
    return std::nullopt;
  }
  return tokens_[id];
}

std::optional<int32_t> TiktokenTokenizer::token_to_id(std::string_view token) const {
  if (const auto id = specials_.find(token)) return id;
  const auto it = ranks_.find(token);
  if (it == ranks_.end()) return std::nullopt;
  return it->second;
}

bool TiktokenTokenizer::is_special(int32_t id) const {
  return specials_.find(id) != nullptr;
}

}  // namespace kiln::tok
