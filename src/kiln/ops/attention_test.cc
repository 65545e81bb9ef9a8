#include "kiln/ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <vector>

namespace kiln::ops {
namespace {

// One row, 2 query heads sharing 1 KV head of dim 1, keys all equal so every visible
// position gets the same weight: the output is the mean of the visible values.
AttentionShape mean_shape(int64_t tokens, int64_t window) {
  AttentionShape s;
  s.batch = 1;
  s.tokens = tokens;
  s.start = 0;
  s.cache_len = tokens;
  s.cache_max = tokens + 1;
  s.heads = 2;
  s.kv_heads = 1;
  s.head_dim = 1;
  s.value_dim = 1;
  s.scale = 1.0f;
  s.window = window;
  return s;
}

TEST(CausalAttention, AveragesVisibleValuesWithGroupedHeads) {
  const std::vector<float> q(4 * 2, 1.0f);       // [1, 4, 2, 1]
  const std::vector<float> k(5, 1.0f);           // [1, 5, 1, 1]
  const std::vector<float> v = {1, 2, 3, 4, 0};  // [1, 5, 1, 1]
  std::vector<float> out(4 * 2);                 // [1, 4, 2, 1]
  causal_attention(q.data(), k.data(), v.data(), out.data(), mean_shape(4, 0));
  EXPECT_EQ(out, (std::vector<float>{1, 1, 1.5f, 1.5f, 2, 2, 2.5f, 2.5f}));
  causal_attention(q.data(), k.data(), v.data(), out.data(), mean_shape(4, 2));  // window 2
  EXPECT_EQ(out, (std::vector<float>{1, 1, 1.5f, 1.5f, 2.5f, 2.5f, 3.5f, 3.5f}));
}

// Chunks of 3: positions 0-2, 3-5, 6-7 each see only the earlier keys of their own chunk,
// in a prefill and in decode steps over the cache.
TEST(CausalAttention, ChunksSeeOnlyTheirOwnChunk) {
  const int64_t tokens = 8, chunk = 3;
  std::vector<float> q(tokens * 2, 1.0f), k(tokens + 1, 1.0f), v(tokens + 1, 0.0f);
  for (int64_t j = 0; j < tokens; ++j) v[j] = static_cast<float>(j * j);  // [1, 9, 1, 1]
  auto expected = [&](int64_t p) {  // the mean of v over p - p % chunk .. p
    double sum = 0;
    for (int64_t j = p - p % chunk; j <= p; ++j) sum += v[j];
    return sum / static_cast<double>(p % chunk + 1);
  };
  AttentionShape s = mean_shape(tokens, 0);
  s.chunk = chunk;
  std::vector<float> out(tokens * 2), reference(tokens * 2);
  causal_attention(q.data(), k.data(), v.data(), out.data(), s);
  causal_attention_reference(q.data(), k.data(), v.data(), reference.data(), s);
  double worst = 0;
  for (int64_t p = 0; p < tokens; ++p)
    for (int h = 0; h < 2; ++h) {
      worst = std::max(worst, std::fabs(out[p * 2 + h] - expected(p)));
      worst = std::max(worst, std::fabs(reference[p * 2 + h] - expected(p)));
    }
  for (int64_t p = 0; p < tokens; ++p) {  // one decode step at position p
    AttentionShape step = mean_shape(1, 0);
    step.chunk = chunk;
    step.start = p;
    step.cache_len = p + 1;
    step.cache_max = tokens + 1;
    std::vector<float> one(2);
    causal_attention(q.data(), k.data(), v.data(), one.data(), step);
    worst = std::max(worst, std::fabs(one[0] - expected(p)));
  }
  std::cout << "chunked attention: max abs err = " << worst << std::endl;
  EXPECT_LE(worst, 1e-5);
  s.window = 2;  // with a window as well, the later bound wins
  causal_attention_reference(q.data(), k.data(), v.data(), out.data(), s);
  EXPECT_NEAR(out[5 * 2], (v[4] + v[5]) / 2, 1e-5);  // chunk 3-5, window 4-5
  EXPECT_NEAR(out[6 * 2], v[6], 1e-5);               // chunk starts at 6
}

TEST(CausalAttention, DecodeStepSeesTheWholeCacheAndSoftcapBoundsScores) {
  AttentionShape s = mean_shape(1, 0);
  s.start = 2;
  s.cache_len = 3;
  s.cache_max = 3;
  const std::vector<float> q = {1, 1};      // [1, 1, 2, 1]
  const std::vector<float> k = {0, 0, 10};  // [1, 3, 1, 1]
  const std::vector<float> v = {0, 0, 3};   // [1, 3, 1, 1]
  std::vector<float> out(2);
  causal_attention(q.data(), k.data(), v.data(), out.data(), s);
  const double e = std::exp(10.0);
  EXPECT_NEAR(out[0], 3 * e / (e + 2), 1e-5);
  s.softcap = 1.0f;  // score 10 becomes tanh(10) ~ 1
  causal_attention(q.data(), k.data(), v.data(), out.data(), s);
  const double c = std::exp(std::tanh(10.0));
  EXPECT_NEAR(out[1], 3 * c / (c + 2), 1e-5);
}

}  // namespace
}  // namespace kiln::ops
