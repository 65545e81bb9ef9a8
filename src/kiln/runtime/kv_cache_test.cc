// Tests of the KV cache's bookkeeping: lengths, capacity, growth, prefix copies, bf16 values and
// the remembered token ids.
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

// reserve() grows the capacity keeping the filled positions of every row (values and token ids);
// copy_prefix() takes the first positions of another cache.
TEST(KvCache, GrowsKeepingFilledPositionsAndCopiesPrefixes) {
  KvCache cache(tiny_spec(), 2, 3);
  const int32_t ids[] = {1, 2, 3, 4};  // [2, 2]
  cache.remember_tokens(ids, 2);
  std::vector<float> values(2 * 4);  // two positions of one KV head of 4
  for (int64_t b = 0; b < 2; ++b) {
    for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(10 * b + i);
    write_positions(cache.layer(1).keys, b, 0, values.data(), 2);
  }
  cache.advance(2);
  EXPECT_EQ(cache.bytes(), 2 * 3 * cache.bytes_per_token());
  cache.reserve(2);  // smaller: nothing changes
  EXPECT_EQ(cache.capacity(), 3);
  cache.reserve(7);
  EXPECT_EQ(cache.capacity(), 7);
  EXPECT_EQ(cache.layer(1).keys.shape(), (Shape{2, 7, 1, 4}));
  EXPECT_EQ(cache.bytes(), 2 * 7 * cache.bytes_per_token());
  EXPECT_EQ(cache.length(), 2);
  const float* keys = cache.layer(1).keys.data<float>();
  EXPECT_EQ(keys[7], 7.0f);           // row 0, position 1
  EXPECT_EQ(keys[7 * 4 + 5], 15.0f);  // row 1, position 1
  EXPECT_EQ(keys[7 * 4 + 8], 0.0f);   // row 1, position 2: not written
  const int32_t next[] = {9, 9};
  EXPECT_EQ(cache.tokens_with(next, 1), (std::vector<int32_t>{1, 2, 9, 3, 4, 9}));

  KvCache copy(tiny_spec(), 2, 4);
  copy.copy_prefix(cache, 1);
  EXPECT_EQ(copy.length(), 1);
  EXPECT_EQ(copy.layer(1).keys.data<float>()[4 * 4 + 3], 13.0f);  // row 1, position 0
  EXPECT_EQ(copy.tokens_with(next, 1), (std::vector<int32_t>{1, 9, 3, 9}));
  EXPECT_THROW(copy.copy_prefix(cache, 3), Error);  // more than the source holds
  KvCache other_batch(tiny_spec(), 1, 4);
  EXPECT_THROW(other_batch.copy_prefix(cache, 1), Error);
}

// A bf16 cache stores values rounded to nearest even (half the bytes of f32) and reads them
// back as f32; an f32 cache reads its own memory.
TEST(KvCache, Bf16ValuesRoundAndReadBackAsF32) {
  KvCache f32(tiny_spec(), 1, 4);
  KvCache bf16(tiny_spec(), 1, 4, DType::BF16);
  EXPECT_EQ(bf16.bytes_per_token() * 2, f32.bytes_per_token());
  EXPECT_EQ(bf16.layer(0).values.dtype(), DType::BF16);
  const std::vector<float> values = {1.0f, 1.00390625f, 1.01171875f, -3.3f,
                                     0.0f, 1e-3f,       65504.0f,    -0.5f};
  write_positions(bf16.layer(0).values, 0, 1, values.data(), 2);
  write_positions(f32.layer(0).values, 0, 1, values.data(), 2);
  std::vector<float> scratch(3 * 4);
  int64_t stride = 0;
  const float* read = read_positions(bf16.layer(0).values, 3, scratch.data(), stride);
  EXPECT_EQ(stride, 3);
  EXPECT_EQ(read, scratch.data());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(read[i], 0.0f);
  for (size_t i = 0; i < values.size(); ++i)
    EXPECT_EQ(read[4 + i], bf16_to_f32(f32_to_bf16(values[i]))) << i;
  EXPECT_EQ(read[4 + 1], 1.0f);  // a tie rounds to even
  EXPECT_NEAR(read[4 + 3], -3.3f, 3.3f / 256);
  const float* own = read_positions(f32.layer(0).values, 3, nullptr, stride);
  EXPECT_EQ(stride, 4);
  EXPECT_EQ(own, f32.layer(0).values.data<float>());
  EXPECT_THROW(KvCache(tiny_spec(), 1, 4, DType::F16), Error);
}

}  // namespace
}  // namespace kiln
