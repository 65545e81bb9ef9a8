// Open-addressing hash tables for the tokenizer's hot lookups: token string -> id over a
// vocabulary's byte arena, and (left id, right id) -> merge. Far fewer cache misses and
// allocations than std::unordered_map for vocabularies of 10^5..10^6 entries. Both start
// from zeroed memory (no fill pass) and expose their hashing and prefetching so that bulk
// loaders can overlap the cache misses of many lookups.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "kiln/tokenizer/zeroed_array.h"

namespace kiln::tok {

// A fast 64-bit hash of a byte string (multiply-xorshift over 8-byte words).
inline uint64_t hash_bytes(std::string_view bytes) {
  constexpr uint64_t kMultiplier = 0x9E3779B97F4A7C15ull;
  uint64_t h = bytes.size() * kMultiplier;
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    h = (h ^ word) * kMultiplier;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  h = (h ^ tail) * kMultiplier;
  h ^= h >> 32;
  return h * kMultiplier ^ (h >> 29);
}

// Maps byte strings to ids. The strings live in a caller-owned byte arena, which must stay
// alive and unchanged; each slot records where its string lies.
class StringIdTable {
 public:
  // Empties the table and sizes it for `count` strings of `arena`.
  void reset(const char* arena, size_t count) {
    size_t capacity = 16;
    while (capacity < count * 2) capacity *= 2;
    slots_ = ZeroedArray<Slot>(capacity);
    mask_ = capacity - 1;
    arena_ = arena;
  }
  // Brings the first slot probed for `hash` (from hash_bytes) toward the cache.
  void prefetch(uint64_t hash) const { __builtin_prefetch(&slots_[hash & mask_]); }
  // The id of `key`, whose hash_bytes is `hash`, or -1.
  int32_t find(std::string_view key, uint64_t hash) const {
    if (slots_.size() == 0) return -1;
    const uint32_t tag = static_cast<uint32_t>(hash >> 32);
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id_plus_one == 0) return -1;
      if (slot.tag == tag && slot.length == key.size() &&
          std::memcmp(arena_ + slot.offset, key.data(), key.size()) == 0) {
        return static_cast<int32_t>(slot.id_plus_one - 1);
      }
    }
  }
  int32_t find(std::string_view key) const { return find(key, hash_bytes(key)); }
  // Looks up `count` keys into `ids` (-1 when absent), overlapping their cache misses.
  void find_batch(const std::string_view* keys, size_t count, int32_t* ids) const {
    if (slots_.size() == 0) {
      for (size_t k = 0; k < count; ++k) ids[k] = -1;
      return;
    }
    constexpr size_t kBatch = 64;
    uint64_t hashes[kBatch];
    for (size_t first = 0; first < count; first += kBatch) {
      const size_t n = count - first < kBatch ? count - first : kBatch;
      for (size_t k = 0; k < n; ++k) {
        hashes[k] = hash_bytes(keys[first + k]);
        prefetch(hashes[k]);
      }
      // The first probed slot is (likely) cached now; prefetch the string it points at.
      for (size_t k = 0; k < n; ++k) {
        const Slot& slot = slots_[hashes[k] & mask_];
        if (slot.id_plus_one != 0) __builtin_prefetch(arena_ + slot.offset);
      }
      for (size_t k = 0; k < n; ++k) ids[first + k] = find(keys[first + k], hashes[k]);
    }
  }
  // Indexes arena[offset, offset + length) -> id, given its hash_bytes `hash`; returns false
  // (and changes nothing) when an equal string is already indexed.
  bool insert(uint32_t offset, uint32_t length, int32_t id, uint64_t hash) {
    const uint32_t tag = static_cast<uint32_t>(hash >> 32);
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.id_plus_one == 0) {
        slot = Slot{tag, length, offset, static_cast<uint32_t>(id) + 1};
        return true;
      }
      if (slot.tag == tag && slot.length == length &&
          std::memcmp(arena_ + slot.offset, arena_ + offset, length) == 0) {
        return false;
      }
    }
  }

 private:
  struct Slot {
    uint32_t tag;          // high half of the hash
    uint32_t length;       // of the string in bytes
    uint32_t offset;       // of the string in the arena
    uint32_t id_plus_one;  // 0 when the slot is empty
  };
  ZeroedArray<Slot> slots_;  // [capacity]
  size_t mask_ = 0;
  const char* arena_ = nullptr;
};

// Maps a 64-bit key (any but ~0) to a value; `Value` is trivially copyable.
template <class Value>
class U64Table {
 public:
  explicit U64Table(size_t expected = 0) { reset(expected); }
  // Empties the table and sizes it for `expected` keys (it grows past that when needed).
  void reset(size_t expected) {
    size_t capacity = 16;
    while (capacity < expected * 2) capacity *= 2;
    slots_ = ZeroedArray<Slot>(capacity);
    mask_ = capacity - 1;
    size_ = 0;
  }
  // Brings the first slot probed for `key` toward the cache.
  void prefetch(uint64_t key) const { __builtin_prefetch(&slots_[mix(key) & mask_]); }
  // The value of `key`, or nullptr.
  const Value* find(uint64_t key) const {
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.stored_key == key + 1) return &slot.value;
      if (slot.stored_key == 0) return nullptr;
    }
  }
  // Sets `key` to `value`.
  void insert_or_assign(uint64_t key, const Value& value) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.stored_key == key + 1) {
        slot.value = value;
        return;
      }
      if (slot.stored_key == 0) {
        slot = Slot{key + 1, value};
        ++size_;
        return;
      }
    }
  }

 private:
  struct Slot {
    uint64_t stored_key;  // key + 1; 0 when the slot is empty
    Value value;
  };
  static uint64_t mix(uint64_t key) {
    key ^= key >> 33;
    key *= 0xFF51AFD7ED558CCDull;
    key ^= key >> 33;
    return key;
  }
  void grow() {
    ZeroedArray<Slot> old = std::move(slots_);
    reset(old.size());
    for (size_t i = 0; i < old.size(); ++i) {
      if (old[i].stored_key != 0) insert_or_assign(old[i].stored_key - 1, old[i].value);
    }
  }
  ZeroedArray<Slot> slots_;  // [capacity]
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace kiln::tok
