#include "kiln/runtime/kv_cache.h"

#include <string>

#include "kiln/core/error.h"

namespace kiln {

KvCache::KvCache(const ModelSpec& spec, int64_t batch, int64_t capacity)
    : batch_(batch), capacity_(capacity) {
  check(batch > 0 && capacity > 0, "KV cache: batch and capacity must be positive");
  for (const LayerSpec& layer : spec.layers) {
    const AttentionSpec& a = layer.attention;
    const int64_t value_dim = a.value_head_dim > 0 ? a.value_head_dim : a.head_dim;
    layers_.push_back({Tensor::zeros(DType::F32, {batch, capacity, a.num_kv_heads, a.head_dim}),
                       Tensor::zeros(DType::F32, {batch, capacity, a.num_kv_heads, value_dim})});
  }
}

void KvCache::advance(int64_t tokens) {
  check(length_ + tokens <= capacity_, "KV cache: " + std::to_string(length_ + tokens) +
                                           " positions exceed its capacity of " +
                                           std::to_string(capacity_));
  length_ += tokens;
}

}  // namespace kiln
