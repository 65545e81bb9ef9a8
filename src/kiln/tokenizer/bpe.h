// The BPE model: byte-level (GPT-2, Llama 3, Qwen) and SentencePiece-style (Llama 2, Gemma,
// with byte fallback and fused unknowns), with a cache of recently tokenized words.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kiln/tokenizer/flat_hash.h"
#include "kiln/tokenizer/model.h"
#include "kiln/tokenizer/model_tables.h"
#include "kiln/tokenizer/vocabulary.h"
#include "kiln/tokenizer/zeroed_array.h"

namespace kiln::tok {

struct BpeOptions {
  std::optional<std::string> unk_token;   // emitted for characters missing from the vocab
  std::string continuing_subword_prefix;  // e.g. "##"; prepended to non-initial symbols
  std::string end_of_word_suffix;         // e.g. "</w>"; appended to the last symbol
  bool fuse_unk = false;                  // consecutive unknowns become one unk token
  bool byte_fallback = false;             // unknown characters become <0xXX> byte tokens
  bool ignore_merges = false;             // a word that is itself in the vocab is one token
};

class BpeModel : public Model {
 public:
  // Reads tokenizer.json's {"type": "BPE", ...}: options from `spec`, vocab and merges
  // ("left right" strings or [left, right] pairs, in priority order) from `tables`. Throws
  // Error naming `where` when a merge's parts or result are missing from the vocabulary, or
  // the unk token is unknown.
  static std::unique_ptr<BpeModel> from_json(const Json& spec, const ModelTables& tables,
                                             const std::string& where);

  // The strings of a merge list, read from its JSON text without the vocabulary (so that
  // this can run beside the vocabulary's construction). Public for tests.
  struct MergeStrings {
    ZeroedArray<std::string_view> parts;  // [count, 3] left, right and merged string
    ZeroedArray<char> arena;              // merged strings and decoded escaped parts
    size_t count = 0;
    bool ok = false;  // false when the text has a fault (read_merges_checked names it)
  };
  // Reads the merge strings of `text`; `prefix` is the continuing-subword prefix that merged
  // strings drop from their right part.
  static MergeStrings read_merge_strings(std::string_view text, const std::string& prefix);

  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_.size(); }
  std::optional<std::string_view> token_of(int32_t id) const override { return vocab_.token(id); }
  std::optional<int32_t> id_of(std::string_view token) const override { return vocab_.find(token); }

 private:
  BpeModel(Vocabulary vocab, BpeOptions options, const std::string& where);
  // Fills merges_ from `strings`, looking them up in the vocabulary (on two threads when
  // there are many). Returns false, leaving merges_ in an unspecified state, when a string is
  // not in the vocabulary.
  bool resolve_merges(const MergeStrings& strings);
  // Reads the merges one at a time, validating each; throws Error naming the first fault.
  void read_merges_checked(std::string_view text, const std::string& where);

  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  // Runs the merges over `word` without the cache.
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;

  Vocabulary vocab_;
  U64Table<Merge> merges_;  // pair_key(left id, right id) -> merge
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_;  // id of "<0xXX>" per byte, -1 when absent

  mutable std::mutex cache_mutex_;
  struct CacheHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::unordered_map<std::string, std::vector<int32_t>, CacheHash, std::equal_to<>> cache_;
};

}  // namespace kiln::tok
