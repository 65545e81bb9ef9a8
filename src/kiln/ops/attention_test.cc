#include "kiln/ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kiln/ops/kernels.h"

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

// Attention sinks against their formula: a sink s_h joins the softmax denominator of head h,
// out = sum_j exp(score_j) v_j / (exp(s_h) + sum_j exp(score_j)), in a prefill with a sliding
// window and in a decode step over the cache, with every kernel set this machine runs.
TEST(CausalAttention, SinksJoinTheSoftmaxDenominator) {
  const std::vector<float> sinks = {0.5f, -1.0f};             // [Hq]
  const std::vector<float> q = {1, 2, 0.5f, -1, 1, 1, 2, 0};  // [1, 4, 2, 1]
  const std::vector<float> k = {0.3f, -0.2f, 0.7f, 0.1f, 0};  // [1, 5, 1, 1]
  const std::vector<float> v = {1, 2, 3, 4, 0};               // [1, 5, 1, 1]
  // The formula for query position t of head h with visible keys [first, t].
  auto expected = [&](int64_t t, int64_t h, int64_t window) {
    const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
    double numerator = 0.0, denominator = std::exp(static_cast<double>(sinks[h]));
    for (int64_t j = first; j <= t; ++j) {
      const double e = std::exp(static_cast<double>(q[t * 2 + h]) * k[j]);
      numerator += e * v[j];
      denominator += e;
    }
    return numerator / denominator;
  };
  for (const std::string& kernels : available_kernels()) {
    use_kernels(kernels);
    for (const int64_t window : {int64_t{0}, int64_t{2}}) {
      AttentionShape s = mean_shape(4, window);
      s.sinks = sinks.data();
      std::vector<float> out(4 * 2);  // [1, 4, 2, 1]
      causal_attention(q.data(), k.data(), v.data(), out.data(), s);
      double worst = 0.0;
      for (int64_t t = 0; t < 4; ++t)
        for (int64_t h = 0; h < 2; ++h) {
          const double err = std::fabs(out[t * 2 + h] - expected(t, h, window));
          worst = std::max(worst, err);
          EXPECT_LE(err, 1e-6) << kernels << " window " << window << " t " << t << " h " << h;
        }
      std::cout << kernels << " sinks, window " << window << ": max abs err " << worst << std::endl;
      // Decode: the last query alone, over the cache of the first four positions.
      AttentionShape step = s;
      step.tokens = 1;
      step.start = 3;
      float last[2];
      causal_attention(q.data() + 3 * 2, k.data(), v.data(), last, step);
      for (int64_t h = 0; h < 2; ++h) EXPECT_NEAR(last[h], expected(3, h, window), 1e-6);
    }
    // A very negative sink is no sink; a very large one takes all the weight.
    AttentionShape s = mean_shape(4, 0);
    const std::vector<float> none = {-1e4f, -1e4f}, all = {80.0f, 80.0f};
    std::vector<float> with(8), without(8);
    s.sinks = none.data();
    causal_attention(q.data(), k.data(), v.data(), with.data(), s);
    s.sinks = nullptr;
    causal_attention(q.data(), k.data(), v.data(), without.data(), s);
    for (int i = 0; i < 8; ++i) EXPECT_NEAR(with[i], without[i], 1e-6) << kernels;
    s.sinks = all.data();
    causal_attention(q.data(), k.data(), v.data(), with.data(), s);
    for (int i = 0; i < 8; ++i) EXPECT_NEAR(with[i], 0.0f, 1e-6) << kernels;
  }
  use_kernels("auto");
}

}  // namespace
}  // namespace kiln::ops
