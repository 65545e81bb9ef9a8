// Open-addressing hash tables for the tokenizer's hot lookups: token string -> id over a
// vocabulary's own strings, and (left id, right id) -> merge. Far fewer cache misses and
// allocations than std::unordered_map for vocabularies of 10^5..10^6 entries.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

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

// Maps strings to ids; the strings live in a vector<std::string> indexed by id that the owner
// keeps alive and unchanged.
class StringIdTable {
 public:
  // Indexes every entry of `strings` with present[id]; returns the id of a string that is
  // already indexed under another id (a duplicate), or -1.
  int32_t build(const std::vector<std::string>* strings, const std::vector<bool>& present) {
    strings_ = strings;
    size_t count = 0;
    for (bool p : present) count += p;
    size_t capacity = 16;
    while (capacity < count * 2) capacity *= 2;
    slots_.assign(capacity, Slot{0, -1});
    mask_ = capacity - 1;
    for (size_t id = 0; id < strings->size(); ++id) {
      if (present[id] && !insert((*strings)[id], static_cast<int32_t>(id))) {
        return static_cast<int32_t>(id);
      }
    }
    return -1;
  }
  // The id of `key`, or -1.
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash_bytes(key);
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.tag == tag && (*strings_)[slot.id] == key) return slot.id;
    }
  }
  // Inserts `key` -> `id`; returns false when `key` is already present.
  bool insert(std::string_view key, int32_t id) {
    const uint64_t h = hash_bytes(key);
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.id < 0) {
        slot = Slot{tag, id};
        return true;
      }
      if (slot.tag == tag && (*strings_)[slot.id] == key) return false;
    }
  }

 private:
  struct Slot {
    uint32_t tag;  // high half of the hash
    int32_t id;    // -1 when empty
  };
  const std::vector<std::string>* strings_ = nullptr;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Maps a 64-bit key to a value; `Value` is trivially copyable.
template <class Value>
class U64Table {
 public:
  explicit U64Table(size_t expected = 0) { reset(expected); }
  void reset(size_t expected) {
    size_t capacity = 16;
    while (capacity < expected * 2) capacity *= 2;
    keys_.assign(capacity, kEmpty);
    values_.assign(capacity, Value{});
    mask_ = capacity - 1;
    size_ = 0;
  }
  // The value of `key`, or nullptr.
  const Value* find(uint64_t key) const {
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  // Sets `key` to `value` (key must not be ~0).
  void insert_or_assign(uint64_t key, const Value& value) {
    if ((size_ + 1) * 2 > keys_.size()) grow();
    for (size_t i = mix(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == key) {
        values_[i] = value;
        return;
      }
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        values_[i] = value;
        ++size_;
        return;
      }
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t mix(uint64_t key) {
    key ^= key >> 33;
    key *= 0xFF51AFD7ED558CCDull;
    key ^= key >> 33;
    return key;
  }
  void grow() {
    std::vector<uint64_t> keys = std::move(keys_);
    std::vector<Value> values = std::move(values_);
    reset(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] != kEmpty) insert_or_assign(keys[i], values[i]);
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace kiln::tok
