// Every backward kernel against central finite differences of a float64 forward written here
// from the formulas, on small random shapes. The loss is sum(y * r) for a fixed random r (so
// dy = r), or the op's own scalar loss (cross-entropy). Error = max |analytic - numeric| /
// max |numeric| over the tensor, printed for each.
#include "kiln/train/backward.h"
#include "kiln/train/gradient_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/linear.h"
#include "kiln/ops/norm.h"
#include "kiln/train/family_backward.h"

namespace kiln::train {
namespace {

using gradient_check::f32;
using gradient_check::random_vec;
using gradient_check::Vec;
constexpr double kTolerance = 1e-4;

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of `f` at `x`, element by element, in f64.
Vec numeric_gradient(const std::function<double(const Vec&)>& f, Vec x, double h = 1e-5) {
  return gradient_check::numeric_gradient(f, std::move(x), h);
}

// Prints and checks max |analytic - numeric| / max |numeric|.
void expect_close(const std::string& what, const std::vector<float>& analytic, const Vec& numeric) {
  gradient_check::expect_close(what, analytic, numeric, kTolerance);
}

TEST(TrainBackward, Linear) {
  std::mt19937 rng(1);
  const int64_t rows = 3, in = 5, out = 4;
  const Vec x = random_vec(rows * in, rng), w = random_vec(out * in, rng), b = random_vec(out, rng),
            r = random_vec(rows * out, rng);
  auto forward = [&](const Vec& x_, const Vec& w_, const Vec& b_) {
    Vec y(rows * out);
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t o = 0; o < out; ++o) {
        double s = b_[o];
        for (int64_t i = 0; i < in; ++i) s += x_[n * in + i] * w_[o * in + i];
        y[n * out + o] = s;
      }
    return dot(y, r);
  };
  std::vector<float> dx(rows * in), dw(out * in), db(out);
  linear_backward(f32(x).data(), f32(w).data(), f32(r).data(), dx.data(), dw.data(), db.data(),
                  rows, in, out);
  expect_close("linear dx", dx,
               numeric_gradient([&](const Vec& v) { return forward(v, w, b); }, x));
  expect_close("linear dW", dw,
               numeric_gradient([&](const Vec& v) { return forward(x, v, b); }, w));
  expect_close("linear db", db,
               numeric_gradient([&](const Vec& v) { return forward(x, w, v); }, b));
  // Gradients accumulate into what the buffers hold.
  std::vector<float> again = dx;
  linear_backward(f32(x).data(), f32(w).data(), f32(r).data(), again.data(), nullptr, nullptr, rows,
                  in, out);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_FLOAT_EQ(again[i], 2 * dx[i]);
}

TEST(TrainBackward, EmbeddingScatterAddsRepeatedTokens) {
  std::mt19937 rng(2);
  const int64_t vocab = 5, dim = 3;
  const float scale = 1.5f;
  const std::vector<int32_t> tokens = {1, 3, 1, 0, 1, 4};  // token 2 unused, 1 three times
  const int64_t n = static_cast<int64_t>(tokens.size());
  const Vec table = random_vec(vocab * dim, rng), r = random_vec(n * dim, rng);
  auto forward = [&](const Vec& t) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < dim; ++d) s += t[tokens[i] * dim + d] * scale * r[i * dim + d];
    return s;
  };
  std::vector<float> dtable(vocab * dim);
  embedding_backward(tokens.data(), f32(r).data(), dtable.data(), n, vocab, dim, scale);
  expect_close("embedding dtable", dtable, numeric_gradient(forward, table));
  for (int64_t d = 0; d < dim; ++d) EXPECT_EQ(dtable[2 * dim + d], 0.0f);
}

void check_rms_norm(bool one_plus) {
  std::mt19937 rng(3);
  const int64_t rows = 3, dim = 8;
  const float eps = 1e-5f;
  const Vec x = random_vec(rows * dim, rng), w = random_vec(dim, rng),
            r = random_vec(rows * dim, rng);
  auto forward = [&](const Vec& x_, const Vec& w_) {
    double s = 0.0;
    for (int64_t n = 0; n < rows; ++n) {
      double ms = 0.0;
      for (int64_t i = 0; i < dim; ++i) ms += x_[n * dim + i] * x_[n * dim + i];
      const double inv = 1.0 / std::sqrt(ms / dim + eps);
      for (int64_t i = 0; i < dim; ++i)
        s += x_[n * dim + i] * inv * (one_plus ? 1.0 + w_[i] : w_[i]) * r[n * dim + i];
    }
    return s;
  };
  std::vector<float> y(rows * dim), inv_rms(rows), dx(rows * dim), dw(dim);
  ops::rms_norm(f32(x).data(), f32(w).data(), y.data(), rows, dim, eps, one_plus, inv_rms.data());
  rms_norm_backward(f32(x).data(), f32(w).data(), inv_rms.data(), f32(r).data(), dx.data(),
                    dw.data(), rows, dim, one_plus);
  const std::string name = one_plus ? "rms_norm (1+w)" : "rms_norm";
  expect_close(name + " dx", dx, numeric_gradient([&](const Vec& v) { return forward(v, w); }, x));
  expect_close(name + " dw", dw, numeric_gradient([&](const Vec& v) { return forward(x, v); }, w));
}
TEST(TrainBackward, RmsNorm) {
  check_rms_norm(false);
}
TEST(TrainBackward, RmsNormOnePlus) {
  check_rms_norm(true);
}

void check_rope(bool interleaved, int64_t rotary_dim) {
  std::mt19937 rng(4);
  const int64_t tokens = 3, heads = 2, head_dim = 8, pairs = rotary_dim / 2;
  const float scaling = 1.1f;
  const std::vector<int64_t> positions = {0, 5, 2};
  std::vector<float> inv_freq(pairs);
  for (int64_t k = 0; k < pairs; ++k)
    inv_freq[k] = static_cast<float>(std::pow(100.0, -2.0 * k / rotary_dim));
  const Vec x = random_vec(tokens * heads * head_dim, rng), r = random_vec(x.size(), rng);
  auto forward = [&](const Vec& x_) {
    Vec y = x_;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t k = 0; k < pairs; ++k) {
        const double angle = static_cast<float>(positions[t]) * inv_freq[k];
        const double c = std::cos(angle) * scaling, s = std::sin(angle) * scaling;
        const int64_t i0 = interleaved ? 2 * k : k, i1 = interleaved ? 2 * k + 1 : k + pairs;
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t base = (t * heads + h) * head_dim;
          y[base + i0] = x_[base + i0] * c - x_[base + i1] * s;
          y[base + i1] = x_[base + i1] * c + x_[base + i0] * s;
        }
      }
    return dot(y, r);
  };
  std::vector<float> d = f32(r);
  rope_backward(d.data(), positions.data(), tokens, heads, head_dim, rotary_dim, inv_freq.data(),
                scaling, interleaved);
  expect_close(std::string("rope ") + (interleaved ? "interleaved" : "half-split") + " rotary " +
                   std::to_string(rotary_dim) + "/" + std::to_string(head_dim) + " dx",
               d, numeric_gradient(forward, x));
}
TEST(TrainBackward, RopeHalfSplit) {
  check_rope(false, 8);
}
TEST(TrainBackward, RopeInterleaved) {
  check_rope(true, 8);
}
TEST(TrainBackward, RopePartialRotary) {
  check_rope(false, 4);
  check_rope(true, 4);
}

void check_attention(int64_t window) {
  std::mt19937 rng(5);
  AttentionDims s;
  s.batch = 2;
  s.tokens = 5;
  s.heads = 4;
  s.kv_heads = 2;
  s.head_dim = 3;
  s.scale = 0.7f;
  s.window = window;
  const int64_t T = s.tokens, D = s.head_dim, group = s.heads / s.kv_heads;
  const Vec q = random_vec(s.batch * T * s.heads * D, rng),
            k = random_vec(s.batch * T * s.kv_heads * D, rng),
            v = random_vec(s.batch * T * s.kv_heads * D, rng), r = random_vec(q.size(), rng);
  auto forward = [&](const Vec& q_, const Vec& k_, const Vec& v_) {
    double loss = 0.0;
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t kv = h / group,
                        first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
          Vec p(T, 0.0);
          double max_score = -INFINITY, sum = 0.0;
          for (int64_t j = first; j <= t; ++j) {
            double score = 0.0;
            for (int64_t d = 0; d < D; ++d)
              score += q_[((b * T + t) * s.heads + h) * D + d] *
                       k_[((b * T + j) * s.kv_heads + kv) * D + d];
            p[j] = score * s.scale;
            max_score = std::max(max_score, p[j]);
          }
          for (int64_t j = first; j <= t; ++j) sum += p[j] = std::exp(p[j] - max_score);
          for (int64_t d = 0; d < D; ++d) {
            double o = 0.0;
            for (int64_t j = first; j <= t; ++j)
              o += p[j] / sum * v_[((b * T + j) * s.kv_heads + kv) * D + d];
            loss += o * r[((b * T + t) * s.heads + h) * D + d];
          }
        }
    return loss;
  };
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), out(q.size());
  attention_backward(f32(q).data(), f32(k).data(), f32(v).data(), f32(r).data(), dq.data(),
                     dk.data(), dv.data(), s);
  const std::string name = "attention (GQA 4/2" +
                           (window > 0 ? ", window " + std::to_string(window) : std::string()) +
                           ")";
  expect_close(name + " dq", dq,
               numeric_gradient([&](const Vec& x) { return forward(x, k, v); }, q));
  expect_close(name + " dk", dk,
               numeric_gradient([&](const Vec& x) { return forward(q, x, v); }, k));
  expect_close(name + " dv", dv,
               numeric_gradient([&](const Vec& x) { return forward(q, k, x); }, v));
  // The forward (the inference kernel) agrees with the f64 forward here.
  attention_forward(f32(q).data(), f32(k).data(), f32(v).data(), out.data(), s);
  double loss = 0.0;
  for (size_t i = 0; i < out.size(); ++i) loss += out[i] * r[i];
  EXPECT_NEAR(loss, forward(q, k, v), 1e-4);
}
TEST(TrainBackward, CausalAttentionGqa) {
  check_attention(0);
}
TEST(TrainBackward, CausalAttentionSlidingWindow) {
  check_attention(3);
}

void check_gated(Activation activation) {
  std::mt19937 rng(6);
  const int64_t n = 16;
  const Vec gate = random_vec(n, rng, 2.0), up = random_vec(n, rng), r = random_vec(n, rng);
  auto act = [&](double x) {
    if (activation == Activation::kSilu) return x / (1.0 + std::exp(-x));
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  };
  auto forward = [&](const Vec& g, const Vec& u) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += act(g[i]) * u[i] * r[i];
    return s;
  };
  std::vector<float> dgate(n), dup(n), h(n);
  gated_backward(activation, f32(gate).data(), f32(up).data(), f32(r).data(), dgate.data(),
                 dup.data(), n);
  const std::string name = std::string("gated ") + activation_name(activation);
  expect_close(name + " dgate", dgate,
               numeric_gradient([&](const Vec& g) { return forward(g, up); }, gate));
  expect_close(name + " dup", dup,
               numeric_gradient([&](const Vec& u) { return forward(gate, u); }, up));
  gated_forward(activation, f32(gate).data(), f32(up).data(), h.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(h[i], act(gate[i]) * up[i], 1e-5);
}
TEST(TrainBackward, SwiGlu) {
  check_gated(Activation::kSilu);
}
TEST(TrainBackward, GeluTanhGated) {
  check_gated(Activation::kGeluTanh);
}
TEST(TrainBackward, GatedRejectsActivationsWithoutBackward) {
  float x = 1.0f, d = 0.0f;
  try {
    gated_backward(Activation::kRelu, &x, &x, &x, &d, &d, 1);
    FAIL() << "relu has no backward here";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("relu"), std::string::npos) << e.what();
  }
}

TEST(TrainBackward, ResidualAdd) {
  std::mt19937 rng(7);
  const Vec a = random_vec(6, rng), b = random_vec(6, rng), r = random_vec(6, rng);
  auto forward = [&](const Vec& a_, const Vec& b_) {
    double s = 0.0;
    for (size_t i = 0; i < a_.size(); ++i) s += (a_[i] + b_[i]) * r[i];
    return s;
  };
  std::vector<float> da(6), db(6);
  add_backward(f32(r).data(), da.data(), db.data(), 6);
  expect_close("residual add da", da,
               numeric_gradient([&](const Vec& v) { return forward(v, b); }, a));
  expect_close("residual add db", db,
               numeric_gradient([&](const Vec& v) { return forward(a, v); }, b));
}

TEST(TrainBackward, NextTokenTargetsShiftAndMask) {
  const std::vector<int32_t> tokens = {5, 6, 7, 8, 1, 2, 3, 4};  // [2, 4]
  const std::vector<uint8_t> mask = {1, 1, 0, 1, 1, 1, 1, 1};
  EXPECT_EQ(next_token_targets(tokens.data(), nullptr, 2, 4),
            (std::vector<int32_t>{6, 7, 8, -1, 2, 3, 4, -1}));
  const std::vector<int32_t> masked = next_token_targets(tokens.data(), mask.data(), 2, 4);
  EXPECT_EQ(masked, (std::vector<int32_t>{6, -1, 8, -1, 2, 3, 4, -1}));
  EXPECT_EQ(count_targets(masked.data(), 8), 5);
}

// Mean cross-entropy over the non-ignored rows, in f64.
double mean_cross_entropy(const Vec& logits, const std::vector<int32_t>& targets, int64_t vocab) {
  double total = 0.0;
  int64_t count = 0;
  for (size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] == kIgnoreTarget) continue;
    double max_z = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) max_z = std::max(max_z, logits[r * vocab + i]);
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[r * vocab + i] - max_z);
    total += std::log(sum) + max_z - logits[r * vocab + targets[r]];
    ++count;
  }
  return total / static_cast<double>(count);
}

TEST(TrainBackward, CrossEntropyWithIgnoredRows) {
  std::mt19937 rng(8);
  const int64_t vocab = 7;
  const std::vector<int32_t> targets = {3, kIgnoreTarget, 0, 6};
  const int64_t rows = static_cast<int64_t>(targets.size());
  const Vec logits = random_vec(rows * vocab, rng, 2.0);
  std::vector<float> dlogits(rows * vocab);
  const double sum = cross_entropy_rows(f32(logits).data(), targets.data(), dlogits.data(), rows,
                                        vocab, 1.0 / 3.0);
  EXPECT_NEAR(sum / 3.0, mean_cross_entropy(logits, targets, vocab), 1e-6);
  expect_close("cross_entropy dlogits", dlogits,
               numeric_gradient([&](const Vec& z) { return mean_cross_entropy(z, targets, vocab); },
                                logits));
  for (int64_t i = 0; i < vocab; ++i) EXPECT_EQ(dlogits[vocab + i], 0.0f);
}

TEST(TrainBackward, LmHeadCrossEntropyInChunks) {
  std::mt19937 rng(9);
  const int64_t hidden = 4, vocab = 6;
  const std::vector<int32_t> targets = {1, 5, kIgnoreTarget, 0, 2};
  const int64_t rows = static_cast<int64_t>(targets.size());
  const Vec h = random_vec(rows * hidden, rng), w = random_vec(vocab * hidden, rng);
  auto forward = [&](const Vec& h_, const Vec& w_) {
    Vec logits(rows * vocab);
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t o = 0; o < vocab; ++o)
        for (int64_t i = 0; i < hidden; ++i)
          logits[n * vocab + o] += h_[n * hidden + i] * w_[o * hidden + i];
    return mean_cross_entropy(logits, targets, vocab);
  };
  for (int64_t chunk : {2, 64}) {  // 2 rows at a time (a chunk of 1 at the end), or all at once
    std::vector<float> dh(rows * hidden), dw(vocab * hidden);
    const double loss = lm_head_cross_entropy(f32(h).data(), f32(w).data(), targets.data(),
                                              dh.data(), dw.data(), rows, hidden, vocab, chunk);
    EXPECT_NEAR(loss, forward(h, w), 1e-6);
    const std::string name = "lm_head_cross_entropy (chunk " + std::to_string(chunk) + ")";
    expect_close(name + " dh", dh,
                 numeric_gradient([&](const Vec& v) { return forward(v, w); }, h));
    expect_close(name + " dW", dw,
                 numeric_gradient([&](const Vec& v) { return forward(h, v); }, w));
  }
  const std::vector<int32_t> none(rows, kIgnoreTarget);
  EXPECT_EQ(lm_head_cross_entropy(f32(h).data(), f32(w).data(), none.data(), nullptr, nullptr, rows,
                                  hidden, vocab),
            0.0);
}

// The fast kernels (GEMMs) against the reference kernels on shapes that cross their blocks:
// max |fast - reference| / max |reference| per gradient, printed.
double relative_difference(const std::vector<float>& got, const std::vector<float>& want) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::abs(got[i] - want[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::abs(want[i])));
  }
  return max_ref > 0.0 ? max_diff / max_ref : max_diff;
}

TEST(TrainBackward, FastLinearMatchesReference) {
  std::mt19937 rng(21);
  struct Case {
    int64_t rows, in, out;
  };
  for (const Case c :
       {Case{1, 3, 2}, Case{15, 17, 9}, Case{70, 33, 130}, Case{300, 96, 40}, Case{600, 520, 70}}) {
    const std::vector<float> x = f32(random_vec(c.rows * c.in, rng)),
                             w = f32(random_vec(c.out * c.in, rng)),
                             dy = f32(random_vec(c.rows * c.out, rng)),
                             start_x = f32(random_vec(c.rows * c.in, rng)),
                             start_w = f32(random_vec(c.out * c.in, rng)),
                             start_b = f32(random_vec(c.out, rng));
    std::vector<float> dx = start_x, dw = start_w, db = start_b;  // the kernels add into these
    std::vector<float> rx = start_x, rw = start_w, rb = start_b;
    linear_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), db.data(), c.rows, c.in,
                    c.out);
    linear_backward_reference(x.data(), w.data(), dy.data(), rx.data(), rw.data(), rb.data(),
                              c.rows, c.in, c.out);
    const double ex = relative_difference(dx, rx), ew = relative_difference(dw, rw),
                 eb = relative_difference(db, rb);
    std::cout << "linear_backward " << c.rows << " x " << c.in << " -> " << c.out
              << " vs reference: dx " << ex << ", dw " << ew << ", db " << eb << std::endl;
    EXPECT_LE(ex, 1e-5);
    EXPECT_LE(ew, 1e-5);
    EXPECT_LE(eb, 1e-6);
  }
}

TEST(TrainBackward, LinearForwardIsBitwiseTheInferenceKernel) {
  std::mt19937 rng(23);
  for (const int64_t rows : {5, 16, 300}) {
    const int64_t in = 600, out = 70;  // two depth passes of the GEMM
    const std::vector<float> x = f32(random_vec(rows * in, rng)),
                             w = f32(random_vec(out * in, rng)), b = f32(random_vec(out, rng));
    for (const float* bias : {b.data(), static_cast<const float*>(nullptr)}) {
      std::vector<float> got(rows * out), want(rows * out);
      linear_forward(x.data(), w.data(), bias, got.data(), rows, in, out);
      ops::linear(x.data(), w.data(), DType::F32, bias, want.data(), rows, in, out);
      EXPECT_EQ(got, want) << "rows " << rows << (bias ? " with bias" : "");
    }
  }
}

TEST(TrainBackward, FastAttentionMatchesReference) {
  std::mt19937 rng(22);
  struct Case {
    int64_t batch, tokens, heads, kv_heads, head_dim, window;
  };
  for (const Case c :
       {Case{1, 1, 1, 1, 1, 0}, Case{2, 5, 4, 2, 3, 3}, Case{2, 70, 4, 1, 8, 0},
        Case{1, 150, 6, 3, 16, 0}, Case{2, 130, 2, 2, 5, 50}, Case{1, 200, 3, 3, 32, 64}}) {
    AttentionDims s;
    s.batch = c.batch;
    s.tokens = c.tokens;
    s.heads = c.heads;
    s.kv_heads = c.kv_heads;
    s.head_dim = c.head_dim;
    s.scale = 0.4f;
    s.window = c.window;
    const int64_t nq = c.batch * c.tokens * c.heads * c.head_dim,
                  nkv = c.batch * c.tokens * c.kv_heads * c.head_dim;
    const std::vector<float> q = f32(random_vec(nq, rng)), k = f32(random_vec(nkv, rng)),
                             v = f32(random_vec(nkv, rng)), dout = f32(random_vec(nq, rng)),
                             start_q = f32(random_vec(nq, rng)),
                             start_kv = f32(random_vec(nkv, rng));
    std::vector<float> dq = start_q, dk = start_kv, dv = start_kv;
    std::vector<float> rq = start_q, rk = start_kv, rv = start_kv;
    attention_backward(q.data(), k.data(), v.data(), dout.data(), dq.data(), dk.data(), dv.data(),
                       s);
    attention_backward_reference(q.data(), k.data(), v.data(), dout.data(), rq.data(), rk.data(),
                                 rv.data(), s);
    const double eq = relative_difference(dq, rq), ek = relative_difference(dk, rk),
                 ev = relative_difference(dv, rv);
    std::cout << "attention_backward B " << c.batch << " T " << c.tokens << " heads " << c.heads
              << "/" << c.kv_heads << " D " << c.head_dim << " window " << c.window
              << " vs reference: dq " << eq << ", dk " << ek << ", dv " << ev << std::endl;
    EXPECT_LE(eq, 1e-5);
    EXPECT_LE(ek, 1e-5);
    EXPECT_LE(ev, 1e-5);
    // Only the gradients asked for: null buffers are skipped.
    std::vector<float> only_q = start_q;
    attention_backward(q.data(), k.data(), v.data(), dout.data(), only_q.data(), nullptr, nullptr,
                       s);
    EXPECT_EQ(only_q, dq);
    // The blocked training forward against the inference kernel, and the backward from its
    // saved softmax statistics: bitwise what the backward gives when it makes them itself.
    std::vector<float> out(nq), want(nq), stats(c.batch * c.tokens * c.heads * 2);
    attention_forward_train(q.data(), k.data(), v.data(), out.data(), stats.data(), s);
    attention_forward(q.data(), k.data(), v.data(), want.data(), s);
    const double eo = relative_difference(out, want);
    std::cout << "  attention_forward_train vs the inference kernel: " << eo << std::endl;
    EXPECT_LE(eo, 1e-5);
    std::vector<float> sq = start_q, sk = start_kv, sv = start_kv;
    attention_backward(q.data(), k.data(), v.data(), dout.data(), sq.data(), sk.data(), sv.data(),
                       s, stats.data());
    EXPECT_EQ(sq, dq);
    EXPECT_EQ(sk, dk);
    EXPECT_EQ(sv, dv);
  }
}

// ---- The ops of train/family_backward.h ----

void check_layer_norm(bool affine) {
  std::mt19937 rng(21);
  const int64_t rows = 3, dim = 8;
  const float eps = 1e-5f;
  const Vec x = random_vec(rows * dim, rng, 2.0), w = random_vec(dim, rng),
            b = random_vec(dim, rng), r = random_vec(rows * dim, rng);
  auto forward = [&](const Vec& x_, const Vec& w_, const Vec& b_) {
    double s = 0.0;
    for (int64_t n = 0; n < rows; ++n) {
      double mean = 0.0, var = 0.0;
      for (int64_t i = 0; i < dim; ++i) mean += x_[n * dim + i] / dim;
      for (int64_t i = 0; i < dim; ++i)
        var += (x_[n * dim + i] - mean) * (x_[n * dim + i] - mean) / dim;
      for (int64_t i = 0; i < dim; ++i) {
        double y = (x_[n * dim + i] - mean) / std::sqrt(var + eps);
        if (affine) y = y * w_[i] + b_[i];
        s += y * r[n * dim + i];
      }
    }
    return s;
  };
  const std::vector<float> xf = f32(x), wf = f32(w), bf = f32(b);
  const float* wp = affine ? wf.data() : nullptr;
  const float* bp = affine ? bf.data() : nullptr;
  std::vector<float> y(rows * dim), mean(rows), inv(rows), dx(rows * dim), dw(dim), db(dim);
  layer_norm_forward(xf.data(), wp, bp, y.data(), rows, dim, eps, mean.data(), inv.data());
  std::vector<float> expected(rows * dim);  // the inference kernel
  ops::layer_norm(xf.data(), wp, bp, expected.data(), rows, dim, eps);
  for (int64_t i = 0; i < rows * dim; ++i) EXPECT_NEAR(y[i], expected[i], 1e-5) << i;
  layer_norm_backward(xf.data(), wp, mean.data(), inv.data(), f32(r).data(), dx.data(),
                      affine ? dw.data() : nullptr, affine ? db.data() : nullptr, rows, dim);
  const std::string name = affine ? "layer_norm" : "layer_norm (no parameters)";
  expect_close(name + " dx", dx,
               numeric_gradient([&](const Vec& v) { return forward(v, w, b); }, x));
  if (!affine) return;
  expect_close(name + " dw", dw,
               numeric_gradient([&](const Vec& v) { return forward(x, v, b); }, w));
  expect_close(name + " db", db,
               numeric_gradient([&](const Vec& v) { return forward(x, w, v); }, b));
}
TEST(TrainBackward, LayerNorm) {
  check_layer_norm(true);
}
TEST(TrainBackward, LayerNormWithoutParameters) {
  check_layer_norm(false);
}

TEST(TrainBackward, SoftCap) {
  std::mt19937 rng(22);
  const int64_t n = 12;
  const float cap = 1.5f;
  const Vec x = random_vec(n, rng, 3.0), r = random_vec(n, rng);
  auto forward = [&](const Vec& x_) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += cap * std::tanh(x_[i] / cap) * r[i];
    return s;
  };
  std::vector<float> y = f32(x), d = f32(r);
  softcap_forward(y.data(), n, cap);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], cap * std::tanh(x[i] / cap), 1e-6);
  softcap_backward(y.data(), d.data(), n, cap);
  expect_close("softcap dx", d, numeric_gradient(forward, x));
}

void check_capped_attention(float cap, int64_t window) {
  std::mt19937 rng(23);
  AttentionDims s;
  s.batch = 2;
  s.tokens = 5;
  s.heads = 4;
  s.kv_heads = 2;
  s.head_dim = 3;
  s.scale = 0.9f;
  s.window = window;
  const int64_t T = s.tokens, D = s.head_dim, group = s.heads / s.kv_heads;
  const Vec q = random_vec(s.batch * T * s.heads * D, rng, 1.5),
            k = random_vec(s.batch * T * s.kv_heads * D, rng, 1.5),
            v = random_vec(s.batch * T * s.kv_heads * D, rng), r = random_vec(q.size(), rng);
  auto forward = [&](const Vec& q_, const Vec& k_, const Vec& v_) {
    double loss = 0.0;
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t kv = h / group,
                        first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
          Vec p(T, 0.0);
          double max_logit = -INFINITY, sum = 0.0;
          for (int64_t j = first; j <= t; ++j) {
            double score = 0.0;
            for (int64_t d = 0; d < D; ++d)
              score += q_[((b * T + t) * s.heads + h) * D + d] *
                       k_[((b * T + j) * s.kv_heads + kv) * D + d];
            score *= s.scale;
            p[j] = cap > 0.0f ? cap * std::tanh(score / cap) : score;
            max_logit = std::max(max_logit, p[j]);
          }
          for (int64_t j = first; j <= t; ++j) sum += p[j] = std::exp(p[j] - max_logit);
          for (int64_t d = 0; d < D; ++d) {
            double o = 0.0;
            for (int64_t j = first; j <= t; ++j)
              o += p[j] / sum * v_[((b * T + j) * s.kv_heads + kv) * D + d];
            loss += o * r[((b * T + t) * s.heads + h) * D + d];
          }
        }
    return loss;
  };
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), out(q.size());
  capped_attention_backward(f32(q).data(), f32(k).data(), f32(v).data(), f32(r).data(), dq.data(),
                            dk.data(), dv.data(), s, cap);
  const std::string name =
      "capped attention (cap " + std::to_string(cap) + ", window " + std::to_string(window) + ")";
  expect_close(name + " dq", dq,
               numeric_gradient([&](const Vec& x) { return forward(x, k, v); }, q));
  expect_close(name + " dk", dk,
               numeric_gradient([&](const Vec& x) { return forward(q, x, v); }, k));
  expect_close(name + " dv", dv,
               numeric_gradient([&](const Vec& x) { return forward(q, k, x); }, v));
  capped_attention_forward(f32(q).data(), f32(k).data(), f32(v).data(), out.data(), s, cap);
  double loss = 0.0;
  for (size_t i = 0; i < out.size(); ++i) loss += out[i] * r[i];
  EXPECT_NEAR(loss, forward(q, k, v), 1e-4);
}
TEST(TrainBackward, SoftCappedAttention) {
  check_capped_attention(1.0f, 0);
  check_capped_attention(2.0f, 3);
  check_capped_attention(0.0f, 2);  // no cap: the plain attention's gradients
}

TEST(TrainBackward, NonGatedActivations) {
  std::mt19937 rng(24);
  const int64_t n = 16;
  const Vec x = random_vec(n, rng, 2.0), r = random_vec(n, rng);
  for (const Activation activation :
       {Activation::kSilu, Activation::kGeluExact, Activation::kGeluTanh, Activation::kRelu,
        Activation::kReluSquared}) {
    auto act = [&](double z) {
      switch (activation) {
        case Activation::kSilu:
          return z / (1.0 + std::exp(-z));
        case Activation::kGeluExact:
          return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
        case Activation::kGeluTanh:
          return 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
        case Activation::kRelu:
          return std::max(z, 0.0);
        case Activation::kReluSquared:
          return z > 0.0 ? z * z : 0.0;
      }
      return 0.0;
    };
    auto forward = [&](const Vec& x_) {
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += act(x_[i]) * r[i];
      return s;
    };
    std::vector<float> h(n), dx(n);
    activation_forward(activation, f32(x).data(), h.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(h[i], act(x[i]), 1e-5);
    activation_backward(activation, f32(x).data(), f32(r).data(), dx.data(), n);
    expect_close(std::string("activation ") + activation_name(activation) + " dx", dx,
                 numeric_gradient(forward, x));
  }
}

TEST(TrainBackward, LmHeadCrossEntropyWithBiasAndSoftCap) {
  std::mt19937 rng(25);
  const int64_t hidden = 4, vocab = 6;
  const float cap = 2.5f;
  const std::vector<int32_t> targets = {1, 5, kIgnoreTarget, 0, 2};
  const int64_t rows = static_cast<int64_t>(targets.size());
  const Vec h = random_vec(rows * hidden, rng, 2.0), w = random_vec(vocab * hidden, rng),
            b = random_vec(vocab, rng);
  auto forward = [&](const Vec& h_, const Vec& w_, const Vec& b_) {
    Vec logits(rows * vocab);
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t o = 0; o < vocab; ++o) {
        double z = b_[o];
        for (int64_t i = 0; i < hidden; ++i) z += h_[n * hidden + i] * w_[o * hidden + i];
        logits[n * vocab + o] = cap * std::tanh(z / cap);
      }
    return mean_cross_entropy(logits, targets, vocab);
  };
  for (int64_t chunk : {2, 64}) {
    std::vector<float> dh(rows * hidden), dw(vocab * hidden), db(vocab);
    const double loss = lm_head_cross_entropy_capped(f32(h).data(), f32(w).data(), f32(b).data(),
                                                     targets.data(), dh.data(), dw.data(),
                                                     db.data(), rows, hidden, vocab, cap, chunk);
    EXPECT_NEAR(loss, forward(h, w, b), 1e-6);
    const std::string name = "lm_head + bias + soft-cap (chunk " + std::to_string(chunk) + ")";
    expect_close(name + " dh", dh,
                 numeric_gradient([&](const Vec& v) { return forward(v, w, b); }, h));
    expect_close(name + " dw", dw,
                 numeric_gradient([&](const Vec& v) { return forward(h, v, b); }, w));
    expect_close(name + " db", db,
                 numeric_gradient([&](const Vec& v) { return forward(h, w, v); }, b));
  }
}

}  // namespace
}  // namespace kiln::train
