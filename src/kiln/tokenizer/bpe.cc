#include "kiln/tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>

#include "kiln/core/error.h"
#include "kiln/tokenizer/json_reader.h"
#include "kiln/tokenizer/utf8.h"

namespace kiln::tok {
namespace {

constexpr size_t kCacheCapacity = 1 << 16;
constexpr size_t kMaxCachedWordBytes = 256;

// One symbol of a word being merged, in a doubly linked list over a vector.
struct Symbol {
  int32_t id;
  int32_t prev;  // index of the previous live symbol, -1 at the start
  int32_t next;  // index of the next live symbol, -1 at the end
  bool alive;
};

// A merge that may apply at symbol `position`; the queue pops the lowest rank, then the
// leftmost position.
struct Candidate {
  int32_t rank;
  int32_t position;
  int32_t merged_id;
  bool operator>(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : position > other.position;
  }
};

}  // namespace

BpeModel::BpeModel(Vocabulary vocab, BpeOptions options, const std::string& where)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  if (options_.unk_token) {
    unk_id_ = vocab_.find(*options_.unk_token);
    if (!unk_id_) {
      throw Error(child_where(where, "unk_token") + ": '" + *options_.unk_token +
                  "' is not in the vocabulary");
    }
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    byte_ids_[b] = vocab_.find(name).value_or(-1);
  }
}

void BpeModel::append_merged(std::string_view left, std::string_view right,
                             std::string& out) const {
  const std::string& prefix = options_.continuing_subword_prefix;
  out.append(left);
  out.append(right.substr(right.starts_with(prefix) ? prefix.size() : 0));
}

void BpeModel::read_merges(std::string_view text, const std::string& where) {
  if (!read_merges_fast(text, where)) read_merges_checked(text, where);
}

bool BpeModel::read_merges_fast(std::string_view text, const std::string& where) {
  // A merge takes at least 6 characters of JSON ("a b",); only the entries written are touched.
  struct PendingMerge {
    uint64_t pair;
    Merge merge;
  };
  ZeroedArray<PendingMerge> pending(text.size() / 6 + 1);
  size_t count = 0;
  try {
    JsonReader reader(text, where);
    reader.expect('[');
    if (!reader.consume(']')) {
      constexpr size_t kBlock = 32;
      std::string scratch[2 * kBlock];    // decoded strings that have escapes
      std::string merged;                 // the block's merged strings, back to back
      size_t merged_end[kBlock];          // [kBlock] end of each merged string in `merged`
      std::string_view keys[3 * kBlock];  // [kBlock, 3] left, right, merged
      int32_t ids[3 * kBlock];            // [kBlock, 3] their ids, -1 when absent
      bool more = true;
      while (more) {
        size_t n = 0;
        merged.clear();
        for (; n < kBlock && more; ++n) {
          std::string_view left, right;
          if (reader.peek() == '"') {
            const std::string_view both = reader.read_string_view(scratch[2 * n], false);
            const size_t space = both.find(' ');
            if (space == std::string_view::npos || both.find(' ', space + 1) != both.npos) {
              return false;
            }
            left = both.substr(0, space);
            right = both.substr(space + 1);
          } else {
            reader.expect('[');
            left = reader.read_string_view(scratch[2 * n], false);
            reader.expect(',');
            right = reader.read_string_view(scratch[2 * n + 1], false);
            reader.expect(']');
          }
          keys[3 * n] = left;
          keys[3 * n + 1] = right;
          append_merged(left, right, merged);
          merged_end[n] = merged.size();
          more = reader.consume(',');
        }
        for (size_t k = 0; k < n; ++k) {
          const size_t begin = k == 0 ? 0 : merged_end[k - 1];
          keys[3 * k + 2] = std::string_view(merged).substr(begin, merged_end[k] - begin);
        }
        // Strings found in the vocabulary are valid UTF-8; any other is a fault.
        vocab_.find_batch(keys, 3 * n, ids);
        for (size_t k = 0; k < n; ++k) {
          if (ids[3 * k] < 0 || ids[3 * k + 1] < 0 || ids[3 * k + 2] < 0) return false;
          pending[count] = PendingMerge{pair_key(ids[3 * k], ids[3 * k + 1]),
                                        Merge{static_cast<int32_t>(count), ids[3 * k + 2]}};
          ++count;
        }
      }
      reader.expect(']');
    }
  } catch (const Error&) {
    return false;
  }
  // Insert in rank order (a repeated pair keeps its last rank, as in HF), prefetching ahead.
  constexpr size_t kPrefetchDistance = 16;
  merges_.reset(count);
  for (size_t i = 0; i < count; ++i) {
    if (i + kPrefetchDistance < count) merges_.prefetch(pending[i + kPrefetchDistance].pair);
    merges_.insert_or_assign(pending[i].pair, pending[i].merge);
  }
  return true;
}

void BpeModel::read_merges_checked(std::string_view text, const std::string& where) {
  JsonReader reader(text, where);
  merges_.reset(0);
  reader.expect('[');
  if (reader.consume(']')) return;
  std::string left, right, merged;
  int32_t rank = 0;
  do {
    const auto merge_where = [&] { return child_where(where, static_cast<size_t>(rank)); };
    if (reader.peek() == '"') {
      reader.read_string(merged);
      split_merge(merged, left, right, merge_where());
    } else {
      reader.expect('[');
      reader.read_string(left);
      reader.expect(',');
      reader.read_string(right);
      reader.expect(']');
    }
    const auto left_id = vocab_.find(left);
    const auto right_id = vocab_.find(right);
    if (!left_id) throw Error(merge_where() + ": '" + left + "' is not in the vocabulary");
    if (!right_id) throw Error(merge_where() + ": '" + right + "' is not in the vocabulary");
    merged.clear();
    append_merged(left, right, merged);
    const auto merged_id = vocab_.find(merged);
    if (!merged_id) throw Error(merge_where() + ": '" + merged + "' is not in the vocabulary");
    // A repeated pair keeps its last rank, as in HF.
    merges_.insert_or_assign(pair_key(*left_id, *right_id), Merge{rank, *merged_id});
    ++rank;
  } while (reader.consume(','));
  reader.expect(']');
}

std::unique_ptr<BpeModel> BpeModel::from_json(const Json& spec, const ModelTables& tables,
                                              const std::string& where) {
  Vocabulary vocab = Vocabulary::from_json_text(tables.vocab, child_where(where, "vocab"));
  BpeOptions options;
  if (has_field(spec, "unk_token")) options.unk_token = string_field(spec, "unk_token", where);
  options.continuing_subword_prefix = string_field_or(spec, "continuing_subword_prefix", where, "");
  options.end_of_word_suffix = string_field_or(spec, "end_of_word_suffix", where, "");
  options.fuse_unk = bool_field_or(spec, "fuse_unk", where, false);
  options.byte_fallback = bool_field_or(spec, "byte_fallback", where, false);
  options.ignore_merges = bool_field_or(spec, "ignore_merges", where, false);
  if (has_field(spec, "dropout") && number_field_or(spec, "dropout", where, 0.0) != 0.0) {
    throw Error(child_where(where, "dropout") + ": BPE dropout is not supported");
  }
  std::unique_ptr<BpeModel> model(new BpeModel(std::move(vocab), std::move(options), where));
  if (!tables.merges.empty()) model->read_merges(tables.merges, child_where(where, "merges"));
  return model;
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const auto id = vocab_.find(word)) {
      ids.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids.size();
  merge_word(word, ids);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) {
      cache_.emplace(std::string(word), std::vector<int32_t>(ids.begin() + first, ids.end()));
    }
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& ids) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::string key;
  symbols.clear();
  const auto add_symbol = [&](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, true});
  };
  bool previous_was_unknown = false;
  for (size_t pos = 0; pos < word.size();) {
    const size_t length =
        std::min(utf8_sequence_length(static_cast<unsigned char>(word[pos])), word.size() - pos);
    const std::string_view character = word.substr(pos, length);
    const bool is_first = pos == 0;
    pos += length;
    const bool is_last = pos == word.size();
    std::optional<int32_t> id;
    if ((is_first || options_.continuing_subword_prefix.empty()) &&
        (!is_last || options_.end_of_word_suffix.empty())) {
      id = vocab_.find(character);
    } else {
      key.clear();
      if (!is_first) key += options_.continuing_subword_prefix;
      key += character;
      if (is_last) key += options_.end_of_word_suffix;
      id = vocab_.find(key);
    }
    if (id) {
      add_symbol(*id);
      previous_was_unknown = false;
      continue;
    }
    if (options_.byte_fallback && std::all_of(character.begin(), character.end(), [&](char c) {
          return byte_ids_[static_cast<unsigned char>(c)] >= 0;
        })) {
      for (char c : character) add_symbol(byte_ids_[static_cast<unsigned char>(c)]);
      previous_was_unknown = false;
      continue;
    }
    if (unk_id_) {
      if (!(options_.fuse_unk && previous_was_unknown)) add_symbol(*unk_id_);
      previous_was_unknown = true;
    }
  }

  using Queue = std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>>;
  thread_local Queue queue;
  queue = Queue();
  const auto push_candidate = [&](int32_t position) {
    const int32_t next = symbols[position].next;
    if (next < 0) return;
    if (const Merge* merge = merges_.find(pair_key(symbols[position].id, symbols[next].id))) {
      queue.push({merge->rank, position, merge->merged_id});
    }
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_candidate(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.position];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const Merge* merge = merges_.find(pair_key(left.id, right.id));
    if (merge == nullptr || merge->merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.position;
    if (left.prev >= 0) push_candidate(left.prev);
    push_candidate(top.position);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    ids.push_back(symbols[i].id);
  }
}

}  // namespace kiln::tok
