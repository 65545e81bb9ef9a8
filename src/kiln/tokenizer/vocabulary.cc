#include "kiln/tokenizer/vocabulary.h"

#include <cstring>

#include "kiln/core/error.h"
#include "kiln/tokenizer/json_reader.h"

namespace kiln::tok {
namespace {

// The arena offsets are 32-bit.
void check_arena_size(size_t bytes, const std::string& where) {
  if (bytes > UINT32_MAX) throw Error(where + ": vocabulary larger than 4 GiB");
}

}  // namespace

Vocabulary Vocabulary::build(ZeroedArray<char> bytes, const Entry* entries, size_t count,
                             const std::string& where) {
  Vocabulary vocab;
  vocab.bytes_ = std::move(bytes);
  const char* arena = vocab.bytes_.data();
  const auto token_where = [&](const Entry& entry) {
    return child_where(where, "\"" + std::string(arena + entry.offset, entry.length) + "\"");
  };
  int64_t limit = 0;
  for (size_t i = 0; i < count; ++i) {
    const int64_t id = entries[i].id;
    if (id < 0 || id > INT32_MAX) {
      throw Error(token_where(entries[i]) + ": id " + std::to_string(id) + " is out of range");
    }
    limit = std::max(limit, id + 1);
  }
  if (limit > static_cast<int64_t>(count) * 4 + 1024) {
    throw Error(where + ": ids up to " + std::to_string(limit - 1) + " for only " +
                std::to_string(count) + " tokens");
  }
  vocab.spans_ = ZeroedArray<Span>(static_cast<size_t>(limit));
  for (size_t i = 0; i < count; ++i) {
    Span& span = vocab.spans_[entries[i].id];
    if (span.length_plus_one != 0) {
      throw Error(token_where(entries[i]) + ": id " + std::to_string(entries[i].id) +
                  " is used twice");
    }
    span = Span{entries[i].offset, entries[i].length + 1};
  }
  // Index the tokens in id order, hashing a block ahead to overlap the table's cache misses.
  vocab.ids_.reset(arena, count);
  constexpr size_t kBlock = 64;
  uint64_t hashes[kBlock];
  for (size_t first = 0; first < vocab.spans_.size(); first += kBlock) {
    const size_t end = std::min(first + kBlock, vocab.spans_.size());
    for (size_t id = first; id < end; ++id) {
      const Span& span = vocab.spans_[id];
      if (span.length_plus_one == 0) continue;
      hashes[id - first] =
          hash_bytes(std::string_view(arena + span.offset, span.length_plus_one - 1));
      vocab.ids_.prefetch(hashes[id - first]);
    }
    for (size_t id = first; id < end; ++id) {
      const Span& span = vocab.spans_[id];
      if (span.length_plus_one == 0) continue;
      if (!vocab.ids_.insert(span.offset, span.length_plus_one - 1, static_cast<int32_t>(id),
                             hashes[id - first])) {
        throw Error(child_where(where, "\"" + std::string(*vocab.token(id)) + "\"") +
                    ": listed twice");
      }
    }
  }
  return vocab;
}

Vocabulary Vocabulary::from_entries(std::vector<std::pair<std::string, int64_t>> entries,
                                    const std::string& where) {
  size_t total = 0;
  for (const auto& entry : entries) total += entry.first.size();
  check_arena_size(total, where);
  ZeroedArray<char> bytes(total);
  std::vector<Entry> spans(entries.size());
  size_t used = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string& token = entries[i].first;
    if (!token.empty()) std::memcpy(bytes.data() + used, token.data(), token.size());
    spans[i] =
        Entry{static_cast<uint32_t>(used), static_cast<uint32_t>(token.size()), entries[i].second};
    used += token.size();
  }
  return build(std::move(bytes), spans.data(), spans.size(), where);
}

Vocabulary Vocabulary::from_json_text(std::string_view text, const std::string& where) {
  if (text.empty()) throw Error(where + ": missing");
  check_arena_size(text.size(), where);
  JsonReader reader(text, where);
  // A token's bytes never outnumber its JSON text, and an entry takes at least 5 characters
  // ("":0,), so both buffers are large enough; only the parts written are ever touched.
  ZeroedArray<char> bytes(text.size());
  ZeroedArray<Entry> entries(text.size() / 5 + 1);
  size_t count = 0;
  size_t used = 0;
  reader.expect('{');
  if (!reader.consume('}')) {
    std::string scratch;
    do {
      const std::string_view token = reader.read_string_view(scratch, /*validate_utf8=*/true);
      reader.expect(':');
      const int64_t id = reader.read_integer();
      if (!token.empty()) std::memcpy(bytes.data() + used, token.data(), token.size());
      entries[count++] =
          Entry{static_cast<uint32_t>(used), static_cast<uint32_t>(token.size()), id};
      used += token.size();
    } while (reader.consume(','));
    reader.expect('}');
  }
  return build(std::move(bytes), entries.data(), count, where);
}

}  // namespace kiln::tok
