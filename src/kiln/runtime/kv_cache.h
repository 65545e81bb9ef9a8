// The key/value cache of a model: per layer, keys and values of every position seen so far.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/models/model_spec.h"
#include "kiln/ops/rope_frequencies.h"

namespace kiln {

// What one layer keeps per position.
enum class KvLayout {
  kKeysValues,  // the keys and values of every KV head
  kLatent,      // multi-head latent attention: the compressed KV latent and the rotary key
                // shared by all heads; keys and values are (re)computed from them
};

// The cache of one layer; the tensors of the other layout are empty.
struct LayerKvCache {
  KvLayout layout = KvLayout::kKeysValues;
  Tensor keys;         // kKeysValues: [B, capacity, kv_heads, head_dim] f32
  Tensor values;       // kKeysValues: [B, capacity, kv_heads, value_dim] f32
  Tensor latent;       // kLatent: [B, capacity, kv_lora_rank] f32 (after the KV latent norm)
  Tensor rotary_keys;  // kLatent: [B, capacity, qk_rope_head_dim] f32 (after RoPE)

  // ops::rope_frequencies(rope, head_dim, sequence_length) of this layer, computed only when
  // its ops::rope_frequency_key differs from the last call's (so once per sequence unless
  // the scaling depends on the length); valid until the next call.
  const ops::RopeFrequencies& rope_frequencies(const RopeSpec& rope, int64_t head_dim,
                                               int64_t sequence_length);

 private:
  ops::RopeFrequencies rope_;  // of rope_key_
  int64_t rope_key_ = -1;      // -1: none computed yet
};

// f32 cache for `batch` rows of up to `capacity` positions, each layer in the layout its
// attention needs (kLatent for multi-head latent attention). All rows advance together
// (no padding). Model::forward writes positions [length, length + T) and then advances.
class KvCache {
 public:
  KvCache(const ModelSpec& spec, int64_t batch, int64_t capacity);

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  // Positions filled so far (the position of the next token).
  int64_t length() const { return length_; }
  LayerKvCache& layer(int64_t index) { return layers_.at(index); }
  // Bytes the cache holds per token (per row and position), all layers together.
  int64_t bytes_per_token() const;
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
