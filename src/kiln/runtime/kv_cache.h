// The key/value cache of a model: per layer, keys and values of every position seen so far.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/models/model_spec.h"

namespace kiln {

// Keys and values of one layer.
struct LayerKvCache {
  Tensor keys;    // [B, capacity, kv_heads, head_dim] f32
  Tensor values;  // [B, capacity, kv_heads, value_dim] f32
};

// f32 cache for `batch` rows of up to `capacity` positions. All rows advance together
// (no padding). Model::forward writes positions [length, length + T) and then advances.
class KvCache {
 public:
  KvCache(const ModelSpec& spec, int64_t batch, int64_t capacity);

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  // Positions filled so far (the position of the next token).
  int64_t length() const { return length_; }
  LayerKvCache& layer(int64_t index) { return layers_.at(index); }
  // Marks `tokens` more positions as filled. Throws Error when past capacity.
  void advance(int64_t tokens);
  // Forgets every position (keeps the memory).
  void clear() { length_ = 0; }

  // The token ids at positions [length, length + tokens_per_row) of every row, remembered
  // so that a model can recompute the cached positions (length-dependent RoPE).
  //   ids: [B, tokens_per_row]
  void remember_tokens(const int32_t* ids, int64_t tokens_per_row);
  // The token ids of positions [0, length) followed by `next` ([B, next_per_row]):
  // [B, length + next_per_row].
  std::vector<int32_t> tokens_with(const int32_t* next, int64_t next_per_row) const;

 private:
  int64_t batch_;
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<LayerKvCache> layers_;
  std::vector<int32_t> token_ids_;  // [B, capacity]
};

}  // namespace kiln
