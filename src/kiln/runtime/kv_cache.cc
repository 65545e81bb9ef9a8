#include "kiln/runtime/kv_cache.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <utility>

#include "kiln/core/error.h"

namespace kiln {

namespace {
// The four tensors of a layer's cache (undefined ones included).
std::array<Tensor*, 4> tensors_of(LayerKvCache& layer) {
  return {&layer.keys, &layer.values, &layer.latent, &layer.rotary_keys};
}
std::array<const Tensor*, 4> tensors_of(const LayerKvCache& layer) {
  return {&layer.keys, &layer.values, &layer.latent, &layer.rotary_keys};
}

// Values per position of a [B, capacity, ...] cache tensor.
int64_t per_position(const Tensor& t) {
  int64_t n = 1;
  for (size_t d = 2; d < t.shape().size(); ++d) n *= t.shape()[d];
  return n;
}

// `t` ([B, capacity, ...]) with its capacity changed to `capacity`, positions [0, keep) kept.
Tensor resized(const Tensor& t, int64_t capacity, int64_t keep) {
  Shape shape = t.shape();
  const int64_t old_capacity = shape[1];
  shape[1] = capacity;
  Tensor out = Tensor::zeros(t.dtype(), shape);
  const size_t row = static_cast<size_t>(per_position(t)) * dtype_size(t.dtype());
  const auto* from = static_cast<const uint8_t*>(t.raw());
  auto* to = static_cast<uint8_t*>(out.mutable_raw());
  for (int64_t b = 0; b < shape[0]; ++b)
    std::memcpy(to + b * capacity * row, from + b * old_capacity * row, keep * row);
  return out;
}
}  // namespace

void write_positions(Tensor& cache, int64_t b, int64_t position, const float* values,
                     int64_t count) {
  const int64_t n = per_position(cache), capacity = cache.dim(1);
  const int64_t offset = (b * capacity + position) * n;
  if (cache.dtype() == DType::F32) {
    std::memcpy(cache.mutable_data<float>() + offset, values, sizeof(float) * count * n);
    return;
  }
  uint16_t* out = static_cast<uint16_t*>(cache.mutable_raw()) + offset;
  for (int64_t i = 0; i < count * n; ++i) out[i] = f32_to_bf16(values[i]);
}

const float* read_positions(const Tensor& cache, int64_t positions, float* scratch,
                            int64_t& stride) {
  const int64_t capacity = cache.dim(1);
  if (cache.dtype() == DType::F32) {
    stride = capacity;
    return cache.data<float>();
  }
  const int64_t n = per_position(cache);
  const auto* in = static_cast<const uint16_t*>(cache.raw());
  for (int64_t b = 0; b < cache.dim(0); ++b) {
    const uint16_t* from = in + b * capacity * n;
    float* to = scratch + b * positions * n;
    for (int64_t i = 0; i < positions * n; ++i) to[i] = bf16_to_f32(from[i]);
  }
  stride = positions;
  return scratch;
}

KvCache::KvCache(const ModelSpec& spec, int64_t batch, int64_t capacity, DType dtype)
    : batch_(batch), capacity_(capacity), dtype_(dtype) {
  check(batch > 0 && capacity > 0, "KV cache: batch and capacity must be positive");
  check(dtype == DType::F32 || dtype == DType::BF16,
        "KV cache: the dtype must be f32 or bf16, not " + std::string(dtype_name(dtype)));
  token_ids_.assign(static_cast<size_t>(batch * capacity), 0);
  for (const LayerSpec& layer : spec.layers) {
    const AttentionSpec& a = layer.attention;
    LayerKvCache cache;
    if (a.is_mla()) {
      cache.layout = KvLayout::kLatent;
      cache.latent = Tensor::zeros(dtype, {batch, capacity, a.kv_lora_rank});
      cache.rotary_keys = Tensor::zeros(dtype, {batch, capacity, a.qk_rope_head_dim});
    } else {
      const int64_t value_dim = a.value_head_dim > 0 ? a.value_head_dim : a.head_dim;
      cache.keys = Tensor::zeros(dtype, {batch, capacity, a.num_kv_heads, a.head_dim});
      cache.values = Tensor::zeros(dtype, {batch, capacity, a.num_kv_heads, value_dim});
    }
    for (const Tensor* t : tensors_of(cache))
      if (t->defined())
        bytes_per_token_ += per_position(*t) * static_cast<int64_t>(dtype_size(dtype));
    layers_.push_back(std::move(cache));
  }
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

void KvCache::reserve(int64_t positions) {
  if (positions <= capacity_) return;
  for (LayerKvCache& layer : layers_)
    for (Tensor* t : tensors_of(layer))
      if (t->defined()) *t = resized(*t, positions, length_);
  std::vector<int32_t> ids(static_cast<size_t>(batch_ * positions), 0);
  for (int64_t b = 0; b < batch_; ++b)
    std::copy_n(token_ids_.begin() + b * capacity_, length_, ids.begin() + b * positions);
  token_ids_ = std::move(ids);
  capacity_ = positions;
}

void KvCache::copy_prefix(const KvCache& other, int64_t positions) {
  check(other.batch_ == batch_ && other.dtype_ == dtype_ &&
            other.layers_.size() == layers_.size() && other.bytes_per_token_ == bytes_per_token_,
        "KV cache: copy_prefix between caches of different shapes");
  check(positions <= other.length_, "KV cache: copy_prefix of " + std::to_string(positions) +
                                        " positions from a cache of " +
                                        std::to_string(other.length_));
  check_capacity(positions, capacity_);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto from = tensors_of(other.layers_[i]);
    const auto to = tensors_of(layers_[i]);
    for (size_t k = 0; k < to.size(); ++k) {
      if (!to[k]->defined()) continue;
      const size_t row = static_cast<size_t>(per_position(*to[k])) * dtype_size(dtype_);
      for (int64_t b = 0; b < batch_; ++b)
        std::memcpy(static_cast<uint8_t*>(to[k]->mutable_raw()) + b * capacity_ * row,
                    static_cast<const uint8_t*>(from[k]->raw()) + b * other.capacity_ * row,
                    positions * row);
    }
  }
  for (int64_t b = 0; b < batch_; ++b)
    std::copy_n(other.token_ids_.begin() + b * other.capacity_, positions,
                token_ids_.begin() + b * capacity_);
  length_ = positions;
}

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
