// Latent attention's training pieces (train/mla_backward.h) against central finite differences
// of a float64 forward written here from the formulas (DeepSeek-V3's MLA: query LoRA or one
// projection, normed KV latent, interleaved RoPE on the decoupled rotary parts, causal softmax,
// value heads of another size than the query/key heads). Error = max |analytic - numeric| /
// max |numeric| per tensor, printed for each.
#include "kiln/train/mla_backward.h"
#include "kiln/train/gradient_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/rope_frequencies.h"

namespace kiln::train {
namespace {

using gradient_check::random_vec;
using gradient_check::Vec;

// y [rows, out] = x [rows, in] W^T (+ b).
Vec linear(const Vec& x, const Vec& w, const Vec* b, int64_t rows, int64_t in, int64_t out) {
  Vec y(rows * out);
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += x[n * in + i] * w[o * in + i];
      y[n * out + o] = s;
    }
  return y;
}

Vec rms_norm(const Vec& x, const Vec& w, int64_t rows, int64_t dim, double eps) {
  Vec y(x.size());
  for (int64_t n = 0; n < rows; ++n) {
    double ms = 0.0;
    for (int64_t i = 0; i < dim; ++i) ms += x[n * dim + i] * x[n * dim + i];
    const double r = 1.0 / std::sqrt(ms / dim + eps);
    for (int64_t i = 0; i < dim; ++i) y[n * dim + i] = x[n * dim + i] * r * w[i];
  }
  return y;
}

struct Case {
  AttentionSpec spec;
  int64_t batch = 2, T = 5, hidden = 6;
  std::map<std::string, Vec> p;  // the parameters by name, and "x"
};

// Interleaved RoPE on v [P] at `position`.
void rope(double* v, int64_t P, int64_t position, const ops::RopeFrequencies& f) {
  for (int64_t i = 0; i < P / 2; ++i) {
    const double angle = static_cast<double>(position) * f.inv_freq[i];
    const double c = std::cos(angle) * f.attention_scaling,
                 s = std::sin(angle) * f.attention_scaling;
    const double a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * c - b * s;
    v[2 * i + 1] = a * s + b * c;
  }
}

// out [rows, hidden] of MLA in f64.
Vec forward64(const Case& c, const std::map<std::string, Vec>& p) {
  const AttentionSpec& a = c.spec;
  const int64_t rows = c.batch * c.T, H = a.num_heads, nope = a.qk_nope_head_dim;
  const int64_t P = a.qk_rope_head_dim, V = a.value_head_dim, R = a.kv_lora_rank,
                Rq = a.q_lora_rank, D = nope + P, hid = c.hidden;
  const double eps = a.latent_norm.eps;
  const Vec& x = p.at("x");
  Vec q = Rq > 0 ? linear(rms_norm(linear(x, p.at("wq_a"), nullptr, rows, hid, Rq), p.at("q_norm"),
                                   rows, Rq, eps),
                          p.at("wq_b"), nullptr, rows, Rq, H * D)
                 : linear(x, p.at("query"), nullptr, rows, hid, H * D);
  Vec kv = linear(x, p.at("wkv_a"), nullptr, rows, hid, R + P);
  Vec latent(rows * R), rot(rows * P);
  for (int64_t n = 0; n < rows; ++n) {
    std::copy_n(kv.data() + n * (R + P), R, latent.data() + n * R);
    std::copy_n(kv.data() + n * (R + P) + R, P, rot.data() + n * P);
  }
  const Vec up = linear(rms_norm(latent, p.at("kv_norm"), rows, R, eps), p.at("wkv_b"), nullptr,
                        rows, R, H * (nope + V));
  const ops::RopeFrequencies f = ops::rope_frequencies(a.rope, P, c.T);
  for (int64_t n = 0; n < rows; ++n) {
    rope(rot.data() + n * P, P, n % c.T, f);
    for (int64_t h = 0; h < H; ++h) rope(q.data() + (n * H + h) * D + nope, P, n % c.T, f);
  }
  const double scale = a.scale > 0.0f ? a.scale : 1.0 / std::sqrt(double(D));
  Vec mixed(rows * H * V, 0.0);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < c.T; ++t) {
        const int64_t n = b * c.T + t;
        const double* qv = q.data() + (n * H + h) * D;
        Vec s(t + 1);
        double top = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          const int64_t m = b * c.T + j;
          const double* k = up.data() + (m * H + h) * (nope + V);
          double dot = 0.0;
          for (int64_t i = 0; i < nope; ++i) dot += qv[i] * k[i];
          for (int64_t i = 0; i < P; ++i) dot += qv[nope + i] * rot[m * P + i];
          s[j] = dot * scale;
          top = std::max(top, s[j]);
        }
        double sum = 0.0;
        for (double& v : s) sum += v = std::exp(v - top);
        for (int64_t j = 0; j <= t; ++j) {
          const double* v = up.data() + ((b * c.T + j) * H + h) * (nope + V) + nope;
          for (int64_t i = 0; i < V; ++i) mixed[(n * H + h) * V + i] += s[j] / sum * v[i];
        }
      }
  return linear(mixed, p.at("out"), nullptr, rows, H * V, hid);
}

void check(Case c, const std::string& name) {
  std::mt19937 rng(44);
  const AttentionSpec& a = c.spec;
  const int64_t H = a.num_heads, nope = a.qk_nope_head_dim, P = a.qk_rope_head_dim;
  const int64_t V = a.value_head_dim, R = a.kv_lora_rank, Rq = a.q_lora_rank, D = nope + P;
  const int64_t hid = c.hidden, rows = c.batch * c.T;
  c.p["x"] = random_vec(rows * hid, rng);
  if (Rq > 0) {
    c.p["wq_a"] = random_vec(Rq * hid, rng, 0.5);
    c.p["q_norm"] = random_vec(Rq, rng, 0.5);
    for (double& v : c.p["q_norm"]) v = static_cast<float>(v + 1.0);
    c.p["wq_b"] = random_vec(H * D * Rq, rng, 0.5);
  } else {
    c.p["query"] = random_vec(H * D * hid, rng, 0.5);
  }
  c.p["wkv_a"] = random_vec((R + P) * hid, rng, 0.5);
  c.p["kv_norm"] = random_vec(R, rng, 0.5);
  for (double& v : c.p["kv_norm"]) v = static_cast<float>(v + 1.0);
  c.p["wkv_b"] = random_vec(H * (nope + V) * R, rng, 0.5);
  c.p["out"] = random_vec(hid * H * V, rng, 0.5);
  const Vec r = random_vec(rows * hid, rng);
  std::map<std::string, std::vector<float>> v32, g32;
  for (const auto& [key, value] : c.p) {
    v32[key] = std::vector<float>(value.begin(), value.end());
    g32[key] = std::vector<float>(value.size(), 0.0f);
  }
  auto lin = [&](const char* key) {
    return LinearRef{v32[key].data(), nullptr, g32[key].data(), nullptr};
  };
  MlaParams p;
  if (Rq > 0) {
    p.query_down = lin("wq_a");
    p.query_up = lin("wq_b");
    p.query_norm = v32["q_norm"].data();
    p.d_query_norm = g32["q_norm"].data();
  } else {
    p.query = lin("query");
  }
  p.kv_down = lin("wkv_a");
  p.kv_norm = v32["kv_norm"].data();
  p.d_kv_norm = g32["kv_norm"].data();
  p.kv_up = lin("wkv_b");
  p.out = lin("out");
  std::vector<int64_t> positions(rows);
  for (int64_t n = 0; n < rows; ++n) positions[n] = n % c.T;
  MlaSaved saved;
  std::vector<float> out(rows * hid);
  mla_forward(a, p, v32["x"].data(), c.batch, c.T, hid, positions.data(), {}, out.data(), saved);
  const Vec expected = forward64(c, c.p);
  double max_err = 0.0;
  for (int64_t i = 0; i < rows * hid; ++i)
    max_err = std::max(max_err, std::abs(out[i] - expected[i]));
  std::cout << name << ": forward vs f64: max abs err = " << max_err << std::endl;
  EXPECT_LE(max_err, 1e-4);
  const std::vector<float> r32(r.begin(), r.end());
  mla_backward(a, p, v32["x"].data(), saved, c.batch, c.T, hid, positions.data(), {}, r32.data(),
               g32["x"].data());
  for (const auto& [key, value] : c.p) {
    auto loss = [&, key = key](const Vec& changed) {
      std::map<std::string, Vec> q = c.p;
      q[key] = changed;
      const Vec y = forward64(c, q);
      double s = 0.0;
      for (size_t i = 0; i < y.size(); ++i) s += y[i] * r[i];
      return s;
    };
    Vec numeric(value.size());
    Vec point = value;
    for (size_t i = 0; i < point.size(); ++i) {
      const double saved_value = point[i], h = 1e-6;
      point[i] = saved_value + h;
      const double plus = loss(point);
      point[i] = saved_value - h;
      const double minus = loss(point);
      point[i] = saved_value;
      numeric[i] = (plus - minus) / (2 * h);
    }
    double max_diff = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < numeric.size(); ++i) {
      max_diff = std::max(max_diff, std::abs(g32[key][i] - numeric[i]));
      max_ref = std::max(max_ref, std::abs(numeric[i]));
    }
    ASSERT_GT(max_ref, 0.0) << name << " " << key;
    std::cout << name << " d" << key
              << ": max rel err vs finite differences = " << max_diff / max_ref << std::endl;
    EXPECT_LE(max_diff / max_ref, 1e-4) << name << " " << key;
  }
}

AttentionSpec mla_spec(int64_t q_rank, int64_t value_dim) {
  AttentionSpec a;
  a.num_heads = a.num_kv_heads = 2;
  a.qk_nope_head_dim = 3;
  a.qk_rope_head_dim = 4;
  a.head_dim = 7;
  a.value_head_dim = value_dim;
  a.kv_lora_rank = 4;
  a.q_lora_rank = q_rank;
  a.latent_norm = {NormKind::kRms, 1e-6f};
  a.rope.theta = 100.0;
  a.rope.interleaved = true;
  return a;
}

TEST(MlaBackward, QueryLoraAndSmallerValueHeads) {
  Case c;
  c.spec = mla_spec(5, 5);
  c.spec.scale = 0.3f;
  check(c, "mla (q_lora_rank 5, V 5 < D 7)");
}

TEST(MlaBackward, OneQueryProjectionAndLargerValueHeads) {
  Case c;
  c.spec = mla_spec(0, 9);
  check(c, "mla (one query projection, V 9 > D 7)");
}

TEST(MlaBackward, RefusesWhatItDoesNotCompute) {
  AttentionSpec a = mla_spec(5, 5);
  a.sliding_window = 3;
  EXPECT_THROW(check_mla_trainable(a, "layer 0"), Error);
  a = mla_spec(5, 5);
  a.rope.type = RopeType::kNone;
  EXPECT_THROW(check_mla_trainable(a, "layer 0"), Error);
}

}  // namespace
}  // namespace kiln::train
