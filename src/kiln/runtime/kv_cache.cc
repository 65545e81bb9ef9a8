#include "kiln/runtime/kv_cache.h"

#include <algorithm>
#include <string>
#include <utility>

#include "kiln/core/error.h"

namespace kiln {

KvCache::KvCache(const ModelSpec& spec, int64_t batch, int64_t capacity)
    : batch_(batch), capacity_(capacity) {
  check(batch > 0 && capacity > 0, "KV cache: batch and capacity must be positive");
  token_ids_.assign(static_cast<size_t>(batch * capacity), 0);
  for (const LayerSpec& layer : spec.layers) {
    const AttentionSpec& a = layer.attention;
    LayerKvCache cache;
    if (a.is_mla()) {
      cache.layout = KvLayout::kLatent;
      cache.latent = Tensor::zeros(DType::F32, {batch, capacity, a.kv_lora_rank});
      cache.rotary_keys = Tensor::zeros(DType::F32, {batch, capacity, a.qk_rope_head_dim});
    } else {
      const int64_t value_dim = a.value_head_dim > 0 ? a.value_head_dim : a.head_dim;
      cache.keys = Tensor::zeros(DType::F32, {batch, capacity, a.num_kv_heads, a.head_dim});
      cache.values = Tensor::zeros(DType::F32, {batch, capacity, a.num_kv_heads, value_dim});
    }
    layers_.push_back(std::move(cache));
  }
}

int64_t KvCache::bytes_per_token() const {
  size_t bytes = 0;
  for (const LayerKvCache& layer : layers_)
    for (const Tensor* t : {&layer.keys, &layer.values, &layer.latent, &layer.rotary_keys})
      if (t->defined()) bytes += t->nbytes();
  return static_cast<int64_t>(bytes) / (batch_ * capacity_);
}

const ops::RopeFrequencies& LayerKvCache::rope_frequencies(const RopeSpec& rope, int64_t head_dim,
                                                           int64_t sequence_length) {
  const int64_t key = ops::rope_frequency_key(rope, sequence_length);
  if (key != rope_key_) {
    rope_ = ops::rope_frequencies(rope, head_dim, sequence_length);
    rope_key_ = key;
  }
  return rope_;
}

namespace {
// Throws Error when `positions` exceed `capacity` (the message is built only then).
void check_capacity(int64_t positions, int64_t capacity) {
  if (positions > capacity)
    throw Error("KV cache: " + std::to_string(positions) + " positions exceed its capacity of " +
                std::to_string(capacity));
}
}  // namespace

void KvCache::advance(int64_t tokens) {
  check_capacity(length_ + tokens, capacity_);
  length_ += tokens;
}

void KvCache::remember_tokens(const int32_t* ids, int64_t tokens_per_row) {
  check_capacity(length_ + tokens_per_row, capacity_);
  for (int64_t b = 0; b < batch_; ++b)
    std::copy(ids + b * tokens_per_row, ids + (b + 1) * tokens_per_row,
              token_ids_.begin() + b * capacity_ + length_);
}

std::vector<int32_t> KvCache::tokens_with(const int32_t* next, int64_t next_per_row) const {
  std::vector<int32_t> out;  // [B, length + next_per_row]
  out.reserve(static_cast<size_t>(batch_ * (length_ + next_per_row)));
  for (int64_t b = 0; b < batch_; ++b) {
    out.insert(out.end(), token_ids_.begin() + b * capacity_,
               token_ids_.begin() + b * capacity_ + length_);
    out.insert(out.end(), next + b * next_per_row, next + (b + 1) * next_per_row);
  }
  return out;
}

}  // namespace kiln
