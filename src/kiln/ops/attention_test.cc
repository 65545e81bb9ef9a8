#include "kiln/ops/attention.h"

#include <gtest/gtest.h>

#include <cmath>
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
