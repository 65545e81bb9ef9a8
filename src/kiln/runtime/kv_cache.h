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

// The cache of one layer; the tensors of the other layout are empty. The tensors are f32 or
// bf16 (KvCache::dtype); write_positions and read_positions convert.
struct LayerKvCache {
  KvLayout layout = KvLayout::kKeysValues;
  Tensor keys;         // kKeysValues: [B, capacity, kv_heads, head_dim]
  Tensor values;       // kKeysValues: [B, capacity, kv_heads, value_dim]
  Tensor latent;       // kLatent: [B, capacity, kv_lora_rank] (after the KV latent norm)
  Tensor rotary_keys;  // kLatent: [B, capacity, qk_rope_head_dim] (after RoPE)

  // ops::rope_frequencies(rope, head_dim, sequence_length) of this layer, computed only when
  // its ops::rope_frequency_key differs from the last call's (so once per sequence unless
  // the scaling depends on the length); valid until the next call.
  const ops::RopeFrequencies& rope_frequencies(const RopeSpec& rope, int64_t head_dim,
                                               int64_t sequence_length);

 private:
  ops::RopeFrequencies rope_;  // of rope_key_
  int64_t rope_key_ = -1;      // -1: none computed yet
};

// Writes `count` positions of row `b` of `cache` ([B, capacity, ...], f32 or bf16, rounded to
// nearest even) from f32 `values` ([count, ...]), starting at `position`.
void write_positions(Tensor& cache, int64_t b, int64_t position, const float* values,
                     int64_t count);
// Positions [0, positions) of every row of `cache` as f32: the cache's own data when it is
// f32 (`stride` = its capacity), else converted into `scratch` (room for B * positions * the
// values per position; `stride` = positions). The result is laid out [B, stride, ...].
const float* read_positions(const Tensor& cache, int64_t positions, float* scratch,
                            int64_t& stride);

// A cache for `batch` rows of `capacity` positions (f32 or bf16), each layer in the layout its
// attention needs (kLatent for multi-head latent attention). All rows advance together (no
// padding). Model::forward writes positions [length, length + T) and then advances; the
// capacity can grow (reserve) keeping what was written.
class KvCache {
 public:
  KvCache(const ModelSpec& spec, int64_t batch, int64_t capacity, DType dtype = DType::F32);

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  DType dtype() const { return dtype_; }
  // Positions filled so far (the position of the next token).
  int64_t length() const { return length_; }
  LayerKvCache& layer(int64_t index) { return layers_.at(index); }
  const LayerKvCache& layer(int64_t index) const { return layers_.at(index); }
  // Bytes the cache holds per token (per row and position), all layers together.
  int64_t bytes_per_token() const { return bytes_per_token_; }
  // Bytes the cache holds: batch * capacity * bytes_per_token.
  int64_t bytes() const { return batch_ * capacity_ * bytes_per_token_; }
  // Grows the capacity to `positions` when smaller (new tensors, the filled positions
  // copied; a no-op otherwise).
  void reserve(int64_t positions);
  // Marks `tokens` more positions as filled. Throws Error when past capacity.
  void advance(int64_t tokens);
  // Forgets every position (keeps the memory).
  void clear() { length_ = 0; }
  // Copies positions [0, positions) of `other` (same model, batch and dtype; at least that
  // long) into this cache, which then holds exactly those positions. Throws Error when they
  // do not fit or the caches differ.
  void copy_prefix(const KvCache& other, int64_t positions);

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
  DType dtype_;
  int64_t bytes_per_token_ = 0;
  int64_t length_ = 0;
  std::vector<LayerKvCache> layers_;
  std::vector<int32_t> token_ids_;  // [B, capacity]
};

}  // namespace kiln
