// Tests of the KV cache's bookkeeping: lengths, capacity and the remembered token ids.
#include "kiln/runtime/kv_cache.h"

#include <gtest/gtest.h>

#include "kiln/core/error.h"

namespace kiln {
namespace {

ModelSpec tiny_spec() {
  ModelSpec spec;
  LayerSpec layer;
  layer.attention.num_heads = 2;
  layer.attention.num_kv_heads = 1;
  layer.attention.head_dim = 4;
  spec.layers.assign(2, layer);
  return spec;
}

TEST(KvCache, RemembersTokenIdsPerRow) {
  KvCache cache(tiny_spec(), 2, 5);
  const int32_t prompt[] = {1, 2, 3, 4, 5, 6};  // [2, 3]
  cache.remember_tokens(prompt, 3);
  cache.advance(3);
  const int32_t next[] = {7, 8};  // [2, 1]
  EXPECT_EQ(cache.tokens_with(next, 1), (std::vector<int32_t>{1, 2, 3, 7, 4, 5, 6, 8}));
  cache.remember_tokens(next, 1);
  cache.advance(1);
  EXPECT_EQ(cache.length(), 4);
  EXPECT_EQ(cache.layer(1).keys.shape(), (Shape{2, 5, 1, 4}));
  const int32_t too_many[] = {0, 0, 0, 0};  // [2, 2]
  EXPECT_THROW(cache.remember_tokens(too_many, 2), Error);
  cache.clear();
  EXPECT_EQ(cache.tokens_with(next, 1), (std::vector<int32_t>{7, 8}));
}

// A multi-head latent attention layer caches its latent and rotary key only; the bytes per
// token follow each layer's layout and agree with the spec's count.
TEST(KvCache, LatentLayersKeepLatentAndRotaryKey) {
  ModelSpec spec = tiny_spec();
  AttentionSpec& mla = spec.layers[1].attention;
  mla.num_heads = mla.num_kv_heads = 4;
  mla.head_dim = 24;
  mla.value_head_dim = 16;
  mla.kv_lora_rank = 16;
  mla.qk_nope_head_dim = 16;
  mla.qk_rope_head_dim = 8;
  KvCache cache(spec, 2, 5);
  EXPECT_EQ(cache.layer(0).layout, KvLayout::kKeysValues);
  EXPECT_EQ(cache.layer(1).layout, KvLayout::kLatent);
  EXPECT_EQ(cache.layer(1).latent.shape(), (Shape{2, 5, 16}));
  EXPECT_EQ(cache.layer(1).rotary_keys.shape(), (Shape{2, 5, 8}));
  EXPECT_FALSE(cache.layer(1).keys.defined());
  const int64_t expected = 4 * (1 * (4 + 4) + (16 + 8));
  EXPECT_EQ(spec.kv_cache_bytes_per_token(), expected);
  EXPECT_EQ(cache.bytes_per_token(), expected);
}

}  // namespace
}  // namespace kiln
