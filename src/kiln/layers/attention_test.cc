// The Attention layer's Llama 4 options against their formulas, on identity projections:
// interleaved RoPE then a weightless L2 QK norm with chunked attention (RoPE layers), and
// query temperature tuning without RoPE (NoPE layers), in a prefill and in decode steps; and
// clip_qkv (OLMo, DBRX).
#include "kiln/layers/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <random>
#include <vector>

#include "kiln/models/weight_names.h"
#include "kiln/runtime/kv_cache.h"

namespace kiln {
namespace {

constexpr int64_t kDim = 4;  // hidden = head_dim, one head

AttentionSpec one_head_spec() {
  AttentionSpec a;
  a.num_heads = a.num_kv_heads = 1;
  a.head_dim = a.value_head_dim = kDim;
  a.qk_norm_spec = {NormKind::kRms, 1e-5f};
  a.rope.theta = 100.0;
  a.rope.rotary_dim = kDim;
  return a;
}

WeightMap identity_projections(const std::string& module) {
  std::vector<float> eye(kDim * kDim, 0.0f);
  for (int64_t i = 0; i < kDim; ++i) eye[i * kDim + i] = 1.0f;
  WeightMap weights;
  for (const char* part : {"query", "key", "value", "out"})
    weights[names::kernel(names::child(module, part))] = Tensor::from_f32({kDim, kDim}, eye);
  return weights;
}

// The formula, position by position in double: q = k = v = x (clamped to +-clip_qkv); RoPE rotates
// pairs (2i, 2i+1) by p * theta^(-2i/D); the L2 norm divides by sqrt(mean(x^2) + eps); temperature
// multiplies q by log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1; softmax(q.k / sqrt(D))
// over keys j <= p of p's chunk.
std::vector<double> expected_attention(const AttentionSpec& a, std::vector<float> x,
                                       int64_t tokens) {
  if (a.clip_qkv > 0)  // q, k and v are x clamped to [-clip, clip]
    for (float& e : x) e = std::min(std::max(e, -a.clip_qkv), a.clip_qkv);
  std::vector<double> q(tokens * kDim), k(tokens * kDim), out(tokens * kDim, 0.0);
  for (int64_t p = 0; p < tokens; ++p) {
    std::vector<double> row(x.begin() + p * kDim, x.begin() + (p + 1) * kDim);
    if (a.rope.type != RopeType::kNone)
      for (int64_t i = 0; i < kDim / 2; ++i) {
        const double angle = p * std::pow(a.rope.theta, -2.0 * i / kDim);
        const double x0 = row[2 * i], x1 = row[2 * i + 1];
        row[2 * i] = x0 * std::cos(angle) - x1 * std::sin(angle);
        row[2 * i + 1] = x0 * std::sin(angle) + x1 * std::cos(angle);
      }
    if (a.qk_norm == QkNormKind::kL2) {
      double sum = 0;
      for (double e : row) sum += e * e;
      for (double& e : row) e /= std::sqrt(sum / kDim + a.qk_norm_spec.eps);
    }
    double factor = 1.0;
    if (a.temperature_floor_scale > 0)
      factor = std::log(std::floor((p + 1.0) / a.temperature_floor_scale) + 1.0) *
                   a.temperature_attn_scale +
               1.0;
    for (int64_t d = 0; d < kDim; ++d) {
      q[p * kDim + d] = row[d] * factor;
      k[p * kDim + d] = row[d];
    }
  }
  for (int64_t p = 0; p < tokens; ++p) {
    const int64_t first = a.chunk_size > 0 ? p - p % a.chunk_size : 0;
    std::vector<double> w;
    double max = -1e300, sum = 0;
    for (int64_t j = first; j <= p; ++j) {
      double dot = 0;
      for (int64_t d = 0; d < kDim; ++d) dot += q[p * kDim + d] * k[j * kDim + d];
      w.push_back(dot / std::sqrt(static_cast<double>(kDim)));
      max = std::max(max, w.back());
    }
    for (double& e : w) sum += (e = std::exp(e - max));
    for (int64_t j = first; j <= p; ++j)
      for (int64_t d = 0; d < kDim; ++d) out[p * kDim + d] += w[j - first] / sum * x[j * kDim + d];
  }
  return out;
}

// Runs a layer of spec `a` over `tokens` positions as one prefill and as single-token decode
// steps; returns the worst error of either against the formula for `formula`.
double worst_error(const AttentionSpec& a, const AttentionSpec& formula, int64_t tokens) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> x(tokens * kDim);  // [1, T, D]
  for (float& e : x) e = normal(rng);
  const std::string module = names::attention(0);
  const Attention attention(a, kDim, identity_projections(module), module);
  ModelSpec spec;
  spec.hidden_size = kDim;
  spec.layers.assign(1, LayerSpec{});
  spec.layers[0].attention = a;
  const std::vector<double> want = expected_attention(formula, x, tokens);
  Workspace workspace;
  double worst = 0;
  KvCache prefill(spec, 1, tokens);
  std::vector<float> out(tokens * kDim);
  attention.forward(x.data(), 1, tokens, 0, prefill.layer(0), out.data(), workspace, nullptr);
  for (int64_t i = 0; i < tokens * kDim; ++i) worst = std::max(worst, std::fabs(out[i] - want[i]));
  KvCache decode(spec, 1, tokens);
  for (int64_t p = 0; p < tokens; ++p) {
    attention.forward(x.data() + p * kDim, 1, 1, p, decode.layer(0), out.data(), workspace,
                      nullptr);
    for (int64_t d = 0; d < kDim; ++d)
      worst = std::max(worst, std::fabs(out[d] - want[p * kDim + d]));
  }
  return worst;
}

TEST(AttentionLlama4, InterleavedRopeThenL2QkNormWithinChunks) {
  AttentionSpec a = one_head_spec();
  a.rope.interleaved = true;
  a.qk_norm = QkNormKind::kL2;
  a.chunk_size = 3;
  const double err = worst_error(a, a, 11);
  std::cout << "RoPE + L2 QK norm + chunks of 3: max abs err = " << err << std::endl;
  EXPECT_LE(err, 1e-5);
  // Each option matters: the layer without it misses the formula with it.
  for (auto drop : {+[](AttentionSpec& s) { s.chunk_size = 0; },
                    +[](AttentionSpec& s) { s.qk_norm = QkNormKind::kNone; },
                    +[](AttentionSpec& s) { s.rope.interleaved = false; }}) {
    AttentionSpec without = a;
    drop(without);
    EXPECT_GT(worst_error(without, a, 11), 1e-3);
  }
}

TEST(AttentionLlama4, TemperatureTuningWithoutRope) {
  AttentionSpec a = one_head_spec();
  a.rope.type = RopeType::kNone;
  a.temperature_floor_scale = 2.0;
  a.temperature_attn_scale = 0.5;
  const double err = worst_error(a, a, 11);
  std::cout << "NoPE + temperature tuning: max abs err = " << err << std::endl;
  EXPECT_LE(err, 1e-5);
  AttentionSpec untuned = a;
  untuned.temperature_floor_scale = 0.0;
  EXPECT_GT(worst_error(untuned, a, 11), 1e-3);
}

// OLMo / DBRX clip_qkv: the projections are clamped before RoPE and attention.
TEST(AttentionOptions, ClipQkvClampsTheProjections) {
  AttentionSpec a = one_head_spec();
  a.rope.interleaved = true;  // the pairing the formula rotates
  a.clip_qkv = 0.8f;          // inputs ~ N(0, 1.5): most values are clipped
  const double err = worst_error(a, a, 9);
  std::cout << "clip_qkv 0.8: max abs err = " << err << std::endl;
  EXPECT_LE(err, 1e-5);
  AttentionSpec unclipped = a;
  unclipped.clip_qkv = 0.0f;
  EXPECT_GT(worst_error(unclipped, a, 9), 1e-3);
}

}  // namespace
}  // namespace kiln
