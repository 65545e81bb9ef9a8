// Reference backward kernels (see backward.h). Sums that span a row accumulate in double.
#include "kiln/train/backward.h"
#include "kiln/ops/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/linear.h"
#include "kiln/ops/rope.h"

namespace kiln::train {

void linear_forward(const float* x, const float* weight, const float* bias, float* y, int64_t rows,
                    int64_t in, int64_t out) {
  ops::linear(x, weight, DType::F32, bias, y, rows, in, out);
}

void linear_backward(const float* x, const float* weight, const float* dy, float* dx, float* dw,
                     float* db, int64_t rows, int64_t in, int64_t out) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      const float* g = dy + n * out;  // [out]
      float* d = dx + n * in;         // [in]
      for (int64_t o = 0; o < out; ++o) {
        const float go = g[o];
        const float* w = weight + o * in;  // [in]
        for (int64_t i = 0; i < in; ++i) d[i] += go * w[i];
      }
    }
  }
  if (dw) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; ++o) {
      float* d = dw + o * in;  // [in]
      for (int64_t n = 0; n < rows; ++n) {
        const float go = dy[n * out + o];
        const float* xr = x + n * in;  // [in]
        for (int64_t i = 0; i < in; ++i) d[i] += go * xr[i];
      }
    }
  }
  if (db) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0.0;
      for (int64_t n = 0; n < rows; ++n) sum += dy[n * out + o];
      db[o] += static_cast<float>(sum);
    }
  }
}

void embedding_backward(const int32_t* tokens, const float* dy, float* dtable, int64_t n,
                        int64_t vocab, int64_t dim, float scale) {
  for (int64_t r = 0; r < n; ++r) {
    check(tokens[r] >= 0 && tokens[r] < vocab, "embedding_backward: token id out of range");
    float* d = dtable + static_cast<int64_t>(tokens[r]) * dim;  // [dim]
    const float* g = dy + r * dim;                              // [dim]
    for (int64_t i = 0; i < dim; ++i) d[i] += g[i] * scale;
  }
}

void rms_norm_backward(const float* x, const float* weight, const float* inv_rms, const float* dy,
                       float* dx, float* dweight, int64_t rows, int64_t dim, bool one_plus) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;   // [dim]
      const float* gr = dy + r * dim;  // [dim]
      float* dr = dx + r * dim;        // [dim]
      const double inv = inv_rms[r];
      double dot = 0.0;  // sum_i g_i x_i, g = dy * w
      for (int64_t i = 0; i < dim; ++i) {
        const double w = one_plus ? 1.0 + weight[i] : weight[i];
        dot += gr[i] * w * xr[i];
      }
      const double c = inv * inv * dot / static_cast<double>(dim);
      for (int64_t i = 0; i < dim; ++i) {
        const double w = one_plus ? 1.0 + weight[i] : weight[i];
        dr[i] += static_cast<float>(inv * (gr[i] * w - xr[i] * c));
      }
    }
  }
  if (dweight) {
    for (int64_t i = 0; i < dim; ++i) {
      double sum = 0.0;
      for (int64_t r = 0; r < rows; ++r)
        sum += static_cast<double>(dy[r * dim + i]) * x[r * dim + i] * inv_rms[r];
      dweight[i] += static_cast<float>(sum);
    }
  }
}

void rope_backward(float* d, const int64_t* positions, int64_t tokens, int64_t heads,
                   int64_t head_dim, int64_t rotary_dim, const float* inv_freq,
                   float attention_scaling, bool interleaved) {
  // The transpose of a rotation by angle p * f (scaled) is the rotation by -p * f (scaled):
  // the forward kernel at negated positions (cos is even and sin odd, also in f32).
  std::vector<int64_t> negated(positions, positions + tokens);
  for (int64_t& p : negated) p = -p;
  ops::apply_rope(d, negated.data(), tokens, heads, head_dim, rotary_dim, inv_freq,
                  attention_scaling, interleaved);
}

namespace {
ops::AttentionShape attention_shape(const AttentionDims& s) {
  ops::AttentionShape shape;
  shape.batch = s.batch;
  shape.tokens = s.tokens;
  shape.start = 0;
  shape.cache_len = s.tokens;
  shape.cache_max = s.tokens;
  shape.heads = s.heads;
  shape.kv_heads = s.kv_heads;
  shape.head_dim = s.head_dim;
  shape.value_dim = s.head_dim;
  shape.scale = s.scale;
  shape.window = s.window;
  return shape;
}
}  // namespace

void attention_forward(const float* q, const float* k, const float* v, float* out,
                       const AttentionDims& dims) {
  ops::causal_attention(q, k, v, out, attention_shape(dims));
}

void attention_backward(const float* q, const float* k, const float* v, const float* dout,
                        float* dq, float* dk, float* dv, const AttentionDims& s) {
  check(s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0,
        "attention_backward: query heads must be a multiple of KV heads");
  const int64_t T = s.tokens, D = s.head_dim, group = s.heads / s.kv_heads;
  const ops::AttentionShape shape = attention_shape(s);
#pragma omp parallel
  {
    std::vector<float> p(T), dp(T);  // [T] probabilities and their gradients for one query
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t kv = 0; kv < s.kv_heads; ++kv) {
        for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
          for (int64_t t = 0; t < T; ++t) {
            const int64_t first = ops::first_visible_key(shape, t), count = t + 1 - first;
            const float* query = q + ((b * T + t) * s.heads + h) * D;  // [D]
            const float* g = dout + ((b * T + t) * s.heads + h) * D;   // [D]
            auto key = [&](int64_t j) { return k + ((b * T + j) * s.kv_heads + kv) * D; };
            auto value = [&](int64_t j) { return v + ((b * T + j) * s.kv_heads + kv) * D; };
            float max_score = -INFINITY;
            for (int64_t j = 0; j < count; ++j) {
              const float* kj = key(first + j);
              float dot = 0.0f;
              for (int64_t d = 0; d < D; ++d) dot += query[d] * kj[d];
              p[j] = dot * s.scale;
              max_score = std::max(max_score, p[j]);
            }
            double sum = 0.0;
            for (int64_t j = 0; j < count; ++j) {
              p[j] = std::exp(p[j] - max_score);
              sum += p[j];
            }
            double weighted = 0.0;  // sum_j p_j dp_j
            for (int64_t j = 0; j < count; ++j) {
              p[j] = static_cast<float>(p[j] / sum);
              const float* vj = value(first + j);
              float dot = 0.0f;
              for (int64_t d = 0; d < D; ++d) dot += g[d] * vj[d];
              dp[j] = dot;
              weighted += static_cast<double>(p[j]) * dot;
            }
            float* dqh = dq ? dq + ((b * T + t) * s.heads + h) * D : nullptr;  // [D]
            for (int64_t j = 0; j < count; ++j) {
              const int64_t pos = first + j;
              if (dv) {
                float* dvj = dv + ((b * T + pos) * s.kv_heads + kv) * D;
                for (int64_t d = 0; d < D; ++d) dvj[d] += p[j] * g[d];
              }
              const float ds = static_cast<float>(p[j] * (dp[j] - weighted)) * s.scale;
              if (dqh) {
                const float* kj = key(pos);
                for (int64_t d = 0; d < D; ++d) dqh[d] += ds * kj[d];
              }
              if (dk) {
                float* dkj = dk + ((b * T + pos) * s.kv_heads + kv) * D;
                for (int64_t d = 0; d < D; ++d) dkj[d] += ds * query[d];
              }
            }
          }
        }
      }
    }
  }
}

void gated_forward(Activation activation, const float* gate, const float* up, float* h,
                   int64_t count) {
  ops::gated_activation(activation, gate, up, h, count);
}

void gated_backward(Activation activation, const float* gate, const float* up, const float* dh,
                    float* dgate, float* dup, int64_t count) {
  check(activation == Activation::kSilu || activation == Activation::kGeluTanh,
        std::string("gated_backward: activation '") + activation_name(activation) +
            "' has no backward yet (silu and gelu_tanh do)");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; ++i) {
    const float x = gate[i];
    float act, derivative;
    if (activation == Activation::kSilu) {
      const float sig = 1.0f / (1.0f + std::exp(-x));
      act = x * sig;
      derivative = sig * (1.0f + x * (1.0f - sig));
    } else {  // 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
      const float c = static_cast<float>(std::sqrt(2.0 / M_PI));
      const float th = std::tanh(c * (x + 0.044715f * x * x * x));
      act = 0.5f * x * (1.0f + th);
      derivative =
          0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * c * (1.0f + 3.0f * 0.044715f * x * x);
    }
    if (dgate) dgate[i] += dh[i] * up[i] * derivative;
    if (dup) dup[i] += dh[i] * act;
  }
}

void add_backward(const float* dy, float* da, float* db, int64_t count) {
  if (da)
    for (int64_t i = 0; i < count; ++i) da[i] += dy[i];
  if (db)
    for (int64_t i = 0; i < count; ++i) db[i] += dy[i];
}

std::vector<int32_t> next_token_targets(const int32_t* tokens, const uint8_t* loss_mask,
                                        int64_t batch, int64_t tokens_per_row) {
  const int64_t T = tokens_per_row;
  std::vector<int32_t> targets(batch * T, kIgnoreTarget);  // [B, T]
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < T; ++t)
      if (!loss_mask || loss_mask[b * T + t + 1]) targets[b * T + t] = tokens[b * T + t + 1];
  return targets;
}

int64_t count_targets(const int32_t* targets, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += targets[i] != kIgnoreTarget;
  return count;
}

double cross_entropy_rows(const float* logits, const int32_t* targets, float* dlogits, int64_t rows,
                          int64_t vocab, double weight) {
  for (int64_t r = 0; r < rows; ++r)
    check(targets[r] == kIgnoreTarget || (targets[r] >= 0 && targets[r] < vocab),
          "cross_entropy: target id out of range");
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * vocab;                  // [vocab]
    float* dz = dlogits ? dlogits + r * vocab : nullptr;  // [vocab]
    const int32_t target = targets[r];
    if (target == kIgnoreTarget) {
      if (dz) std::fill(dz, dz + vocab, 0.0f);
      continue;
    }
    float max_z = z[0];
    for (int64_t i = 1; i < vocab; ++i) max_z = std::max(max_z, z[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(z[i]) - max_z);
    const double log_sum = std::log(sum) + max_z;
    total += log_sum - z[target];
    if (dz) {
      for (int64_t i = 0; i < vocab; ++i)
        dz[i] = static_cast<float>(weight * std::exp(static_cast<double>(z[i]) - log_sum));
      dz[target] -= static_cast<float>(weight);
    }
  }
  return total;
}

double lm_head_cross_entropy(const float* h, const float* weight, const int32_t* targets, float* dh,
                             float* dw, int64_t rows, int64_t hidden, int64_t vocab,
                             int64_t chunk_rows) {
  check(chunk_rows > 0, "lm_head_cross_entropy: chunk_rows must be positive");
  const int64_t count = count_targets(targets, rows);
  if (count == 0) return 0.0;
  const double weight_per_target = 1.0 / static_cast<double>(count);
  std::vector<float> logits(std::min(chunk_rows, rows) * vocab);  // [chunk, vocab]
  double total = 0.0;
  for (int64_t start = 0; start < rows; start += chunk_rows) {
    const int64_t n = std::min(chunk_rows, rows - start);
    const float* hc = h + start * hidden;  // [n, hidden]
    linear_forward(hc, weight, nullptr, logits.data(), n, hidden, vocab);
    total += cross_entropy_rows(logits.data(), targets + start, logits.data(), n, vocab,
                                weight_per_target);
    linear_backward(hc, weight, logits.data(), dh ? dh + start * hidden : nullptr, dw, nullptr, n,
                    hidden, vocab);
  }
  return total / static_cast<double>(count);
}

}  // namespace kiln::train
