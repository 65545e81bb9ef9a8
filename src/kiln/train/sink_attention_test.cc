// Attention with sinks (train/sink_attention.h) against central finite differences of a float64
// forward written here (causal, grouped KV heads, sliding window or not), and, with sinks far
// below every score, against the plain attention kernel.
#include "kiln/train/sink_attention.h"
#include "kiln/train/gradient_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace kiln::train {
namespace {

using gradient_check::f32;
using gradient_check::random_vec;
using gradient_check::Vec;

// sum(out * r) in f64.
double loss64(const AttentionDims& d, const Vec& q, const Vec& k, const Vec& v, const Vec& sinks,
              const Vec& r, int64_t chunk) {
  const int64_t Hq = d.heads, Hkv = d.kv_heads, D = d.head_dim;
  double loss = 0.0;
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t t = 0; t < d.tokens; ++t) {
        int64_t first = d.window > 0 ? std::max<int64_t>(0, t - d.window + 1) : 0;
        if (chunk > 0) first = std::max(first, t - t % chunk);
        const int64_t g = h / (Hq / Hkv);
        Vec s(d.tokens);
        const bool sink = !sinks.empty();
        double top = sink ? sinks[h] : -1e300;
        for (int64_t j = first; j <= t; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < D; ++c)
            dot += q[((b * d.tokens + t) * Hq + h) * D + c] *
                   k[((b * d.tokens + j) * Hkv + g) * D + c];
          s[j] = dot * d.scale;
          top = std::max(top, s[j]);
        }
        double sum = sink ? std::exp(sinks[h] - top) : 0.0;
        for (int64_t j = first; j <= t; ++j) sum += s[j] = std::exp(s[j] - top);
        for (int64_t c = 0; c < D; ++c) {
          double o = 0.0;
          for (int64_t j = first; j <= t; ++j)
            o += s[j] / sum * v[((b * d.tokens + j) * Hkv + g) * D + c];
          loss += o * r[((b * d.tokens + t) * Hq + h) * D + c];
        }
      }
  return loss;
}

void check(int64_t window, int64_t chunk = 0, bool with_sinks = true) {
  std::mt19937 rng(55);
  const AttentionDims d{2, 6, 4, 2, 3, 0.7f, window};
  const int64_t nq = d.batch * d.tokens * d.heads * d.head_dim;
  const int64_t nk = d.batch * d.tokens * d.kv_heads * d.head_dim;
  const Vec q = random_vec(nq, rng), k = random_vec(nk, rng), v = random_vec(nk, rng),
            r = random_vec(nq, rng);
  const Vec sinks = with_sinks ? random_vec(d.heads, rng) : Vec{};
  const std::vector<float> s32 = f32(sinks);
  const float* s = with_sinks ? s32.data() : nullptr;
  std::vector<float> out(nq);
  sink_attention_forward(f32(q).data(), f32(k).data(), f32(v).data(), s, out.data(), d, chunk);
  double f32_loss = 0.0;
  for (int64_t i = 0; i < nq; ++i) f32_loss += out[i] * r[i];
  EXPECT_NEAR(f32_loss, loss64(d, q, k, v, sinks, r, chunk), 1e-5);
  std::vector<float> dq(nq), dk(nk), dv(nk), ds(d.heads);
  sink_attention_backward(f32(q).data(), f32(k).data(), f32(v).data(), s, f32(r).data(), dq.data(),
                          dk.data(), dv.data(), ds.data(), d, chunk);
  auto numeric = [&](int which) {
    Vec x = which == 0 ? q : which == 1 ? k : which == 2 ? v : sinks, g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double saved = x[i], h = 1e-6;
      auto f = [&]() {
        return loss64(d, which == 0 ? x : q, which == 1 ? x : k, which == 2 ? x : v,
                      which == 3 ? x : sinks, r, chunk);
      };
      x[i] = saved + h;
      const double plus = f();
      x[i] = saved - h;
      const double minus = f();
      x[i] = saved;
      g[i] = (plus - minus) / (2 * h);
    }
    return g;
  };
  const std::pair<const char*, std::vector<float>*> parts[] = {
      {"dq", &dq}, {"dk", &dk}, {"dv", &dv}, {"dsinks", &ds}};
  for (int which = 0; which < (with_sinks ? 4 : 3); ++which) {
    const Vec g = numeric(which);
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < g.size(); ++i) {
      max_diff = std::max(max_diff, std::abs((*parts[which].second)[i] - g[i]));
      max_ref = std::max(max_ref, std::abs(g[i]));
    }
    ASSERT_GT(max_ref, 0.0);
    std::cout << "attention (window " << window << ", chunk " << chunk << ", sinks " << with_sinks
              << ") " << parts[which].first
              << ": max rel err vs finite differences = " << max_diff / max_ref << std::endl;
    EXPECT_LE(max_diff / max_ref, 1e-4) << parts[which].first;
  }
  if (!with_sinks) {  // no sinks: d_sinks untouched
    for (float g : ds) EXPECT_EQ(g, 0.0f);
    return;
  }
  if (chunk > 0) return;
  // Sinks at -inf in effect: the plain kernel's output and gradients.
  const std::vector<float> low(d.heads, -1e4f);
  std::vector<float> plain(nq), dq2(nq), dk2(nk), dv2(nk), dq3(nq), dk3(nk), dv3(nk);
  sink_attention_forward(f32(q).data(), f32(k).data(), f32(v).data(), low.data(), out.data(), d);
  attention_forward(f32(q).data(), f32(k).data(), f32(v).data(), plain.data(), d);
  attention_backward(f32(q).data(), f32(k).data(), f32(v).data(), f32(r).data(), dq2.data(),
                     dk2.data(), dv2.data(), d);
  sink_attention_backward(f32(q).data(), f32(k).data(), f32(v).data(), low.data(), f32(r).data(),
                          dq3.data(), dk3.data(), dv3.data(), nullptr, d);
  for (int64_t i = 0; i < nq; ++i) {
    EXPECT_NEAR(out[i], plain[i], 1e-5);
    EXPECT_NEAR(dq3[i], dq2[i], 1e-5);
  }
  for (int64_t i = 0; i < nk; ++i) EXPECT_NEAR(dk3[i], dk2[i], 1e-5);
}

TEST(SinkAttention, CausalGqaMatchesFiniteDifferences) {
  check(0);
}
TEST(SinkAttention, SlidingWindowMatchesFiniteDifferences) {
  check(3);
}
// Llama 4's chunked attention (chunks of 4 of 6 tokens), without sinks, and with a window too.
TEST(SinkAttention, ChunkedWithoutSinksMatchesFiniteDifferences) {
  check(0, 4, false);
  check(3, 4, true);
}

}  // namespace
}  // namespace kiln::train
