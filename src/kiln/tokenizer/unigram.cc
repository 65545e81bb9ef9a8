#include "kiln/tokenizer/unigram.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/json_reader.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

constexpr double kUnknownPenalty = 10.0;

// Reads [[piece, score], ...].
double read_number(JsonReader& reader) {
  const std::string_view text = reader.skip_value();
  char* end = nullptr;
  const std::string copy(text);
  const double value = std::strtod(copy.c_str(), &end);
  if (copy.empty() || end != copy.c_str() + copy.size()) reader.fail("expected a number");
  return value;
}

}  // namespace

std::unique_ptr<UnigramModel> UnigramModel::from_json(const Json& spec, const ModelTables& tables,
                                                      const std::string& where) {
  const std::string vocab_where = child_where(where, "vocab");
  if (tables.vocab.empty()) throw Error(vocab_where + ": missing");
  JsonReader reader(tables.vocab, vocab_where);
  std::vector<std::pair<std::string, int64_t>> entries;
  std::unique_ptr<UnigramModel> model(new UnigramModel());
  reader.expect('[');
  if (!reader.consume(']')) {
    std::string piece;
    do {
      reader.expect('[');
      reader.read_string(piece);
      reader.expect(',');
      model->scores_.push_back(read_number(reader));
      reader.expect(']');
      model->max_piece_bytes_ = std::max(model->max_piece_bytes_, piece.size());
      entries.emplace_back(piece, static_cast<int64_t>(entries.size()));
    } while (reader.consume(','));
    reader.expect(']');
  }
  if (entries.empty()) throw Error(vocab_where + ": empty");
  model->vocab_ = Vocabulary::from_entries(std::move(entries), vocab_where);
  if (has_field(spec, "unk_id")) {
    const int64_t unk = int_field(spec, "unk_id", where);
    if (unk < 0 || unk >= model->vocab_.size()) {
      throw Error(child_where(where, "unk_id") + ": " + std::to_string(unk) +
                  " is outside the vocabulary");
    }
    model->unk_id_ = static_cast<int32_t>(unk);
  }
  model->byte_fallback_ = bool_field_or(spec, "byte_fallback", where, false);
  model->unk_score_ =
      *std::min_element(model->scores_.begin(), model->scores_.end()) - kUnknownPenalty;
  return model;
}

void UnigramModel::tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  // best[end]: the best segmentation of word[0, end): its score, where its last piece starts
  // and that piece's id.
  struct Node {
    double score = 0;
    size_t start = 0;
    int32_t id = -1;
    bool reached = false;
  };
  std::vector<Node> best(word.size() + 1);
  best[0].reached = true;
  for (size_t start = 0; start < word.size();) {
    const size_t char_length = std::min(
        utf8_sequence_length(static_cast<unsigned char>(word[start])), word.size() - start);
    if (!best[start].reached) {
      start += char_length;
      continue;
    }
    const double base = best[start].score;
    bool single_character_piece = false;
    const size_t longest = std::min(max_piece_bytes_, word.size() - start);
    for (size_t length = 1; length <= longest; ++length) {
      const auto id = vocab_.find(word.substr(start, length));
      if (!id) continue;
      Node& target = best[start + length];
      const double candidate = base + scores_[*id];
      if (!target.reached || candidate > target.score) target = {candidate, start, *id, true};
      single_character_piece |= length == char_length;
    }
    if (!single_character_piece) {
      Node& target = best[start + char_length];
      const double candidate = base + unk_score_;
      if (!target.reached || candidate > target.score) {
        target = {candidate, start, unk_id_, true};
      }
    }
    start += char_length;
  }
  // Walk back, fusing runs of unknown pieces into one string.
  std::vector<std::pair<size_t, size_t>> pieces;  // byte ranges, last first
  for (size_t end = word.size(); end > 0;) {
    const Node& node = best[end];
    const bool unknown = node.id == unk_id_;
    if (unknown && !pieces.empty() && best[pieces.back().second].id == unk_id_ &&
        pieces.back().first == end) {
      pieces.back().first = node.start;
    } else {
      pieces.emplace_back(node.start, end);
    }
    end = node.start;
  }
  for (size_t i = pieces.size(); i-- > 0;) {
    const std::string_view piece = word.substr(pieces[i].first, pieces[i].second - pieces[i].first);
    if (const auto id = vocab_.find(piece)) {
      ids.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char b : piece) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", b);
        const auto id = vocab_.find(name);
        if (!id) break;
        bytes.push_back(*id);
      }
      if (bytes.size() == piece.size()) {
        ids.insert(ids.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (unk_id_ < 0) throw Error("Unigram: '" + std::string(piece) + "' needs an unk_id");
    ids.push_back(unk_id_);
  }
}

}  // namespace kiln::tok
