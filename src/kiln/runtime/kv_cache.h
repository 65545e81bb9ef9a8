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

 private:
  int64_t batch_;
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<LayerKvCache> layers_;
};

}  // namespace kiln
