#include "kiln/tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <queue>
#include <thread>

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

BpeModel::MergeStrings BpeModel::read_merge_strings(std::string_view text,
                                                    const std::string& prefix) {
  MergeStrings strings;
  // Every merge has at least two quotes; its merged string and decoded parts never outgrow
  // twice its JSON text. Only the parts of the buffers that are written get touched.
  const size_t quotes = static_cast<size_t>(std::count(text.begin(), text.end(), '"'));
  strings.parts = ZeroedArray<std::string_view>(3 * (quotes / 2 + 1));
  strings.arena = ZeroedArray<char>(2 * text.size());
  char* arena_end = strings.arena.data();
  const auto keep = [&](std::string_view part, const std::string& scratch) {
    if (part.data() != scratch.data()) return part;  // a view of the text
    std::memcpy(arena_end, part.data(), part.size());
    arena_end += part.size();
    return std::string_view(arena_end - part.size(), part.size());
  };
  try {
    JsonReader reader(text, "merges");
    reader.expect('[');
    if (!reader.consume(']')) {
      std::string scratch;
      do {
        std::string_view left, right;
        if (reader.peek() == '"') {
          const std::string_view both = keep(reader.read_string_view(scratch, false), scratch);
          const size_t space = both.find(' ');
          if (space == std::string_view::npos || both.find(' ', space + 1) != both.npos) {
            return strings;
          }
          left = both.substr(0, space);
          right = both.substr(space + 1);
        } else {
          reader.expect('[');
          left = keep(reader.read_string_view(scratch, false), scratch);
          reader.expect(',');
          right = keep(reader.read_string_view(scratch, false), scratch);
          reader.expect(']');
        }
        const std::string_view right_rest =
            right.substr(right.starts_with(prefix) ? prefix.size() : 0);
        char* merged = arena_end;
        std::memcpy(arena_end, left.data(), left.size());
        arena_end += left.size();
        std::memcpy(arena_end, right_rest.data(), right_rest.size());
        arena_end += right_rest.size();
        std::string_view* parts = &strings.parts[3 * strings.count];
        parts[0] = left;
        parts[1] = right;
        parts[2] = std::string_view(merged, static_cast<size_t>(arena_end - merged));
        ++strings.count;
      } while (reader.consume(','));
      reader.expect(']');
    }
  } catch (const Error&) {
    return strings;
  }
  strings.ok = true;
  return strings;
}

bool BpeModel::resolve_merges(const MergeStrings& strings) {
  const size_t count = strings.count;
  ZeroedArray<int32_t> ids(3 * count);  // [count, 3] ids of the parts, -1 when absent
  // Lookups dominate; a second thread takes the second half of the list when it is long.
  constexpr size_t kMinMergesPerThread = 1 << 14;
  const size_t half = count >= 2 * kMinMergesPerThread ? count / 2 : count;
  {
    std::jthread helper;
    if (half < count) {
      helper = std::jthread(
          [&] { vocab_.find_batch(&strings.parts[3 * half], 3 * (count - half), &ids[3 * half]); });
    }
    vocab_.find_batch(strings.parts.data(), 3 * half, ids.data());
  }
  // Insert in rank order (a repeated pair keeps its last rank, as in HF), prefetching ahead.
  constexpr size_t kPrefetchDistance = 16;
  merges_.reset(count);
  for (size_t i = 0; i < count; ++i) {
    const int32_t* merge_ids = &ids[3 * i];
    if (merge_ids[0] < 0 || merge_ids[1] < 0 || merge_ids[2] < 0) return false;
    if (i + kPrefetchDistance < count) {
      const int32_t* ahead = &ids[3 * (i + kPrefetchDistance)];
      merges_.prefetch(pair_key(ahead[0], ahead[1]));
    }
    merges_.insert_or_assign(pair_key(merge_ids[0], merge_ids[1]),
                             Merge{static_cast<int32_t>(i), merge_ids[2]});
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
    const std::string& prefix = options_.continuing_subword_prefix;
    merged.assign(left);
    merged.append(right, right.starts_with(prefix) ? prefix.size() : 0);
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
  // The merge strings are read on a second thread while the vocabulary is built (for big
  // lists); a malformed prefix option only makes that work useless, the options below
  // report it.
  const auto prefix_field = spec.find("continuing_subword_prefix");
  const std::string prefix = prefix_field != spec.end() && prefix_field->is_string()
                                 ? prefix_field->get<std::string>()
                                 : std::string();
  constexpr size_t kMinParallelMergeText = size_t{1} << 20;
  MergeStrings merge_strings;
  std::exception_ptr merge_failure;  // an unexpected failure (out of memory) of the reader
  std::jthread merge_reader;
  const auto read_strings = [&] {
    try {
      merge_strings = read_merge_strings(tables.merges, prefix);
    } catch (...) {
      merge_failure = std::current_exception();
    }
  };
  if (tables.merges.size() >= kMinParallelMergeText) merge_reader = std::jthread(read_strings);
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
  if (tables.merges.empty()) return model;
  if (merge_reader.joinable()) {
    merge_reader.join();
  } else {
    read_strings();
  }
  if (merge_failure) std::rethrow_exception(merge_failure);
  if (!merge_strings.ok || !model->resolve_merges(merge_strings)) {
    model->read_merges_checked(tables.merges, child_where(where, "merges"));
  }
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
