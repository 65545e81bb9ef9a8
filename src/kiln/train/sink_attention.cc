#include "kiln/train/sink_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kiln/train/family_backward.h"

namespace kiln::train {

namespace {

// The probabilities of query t of (b, h) over keys [first, t], and the sink's: p [t + 1]
// (entries before `first` unused). Returns p_sink.
double probabilities(const float* q, const float* k, const float* sinks, const AttentionDims& d,
                     int64_t b, int64_t h, int64_t t, int64_t first, std::vector<double>& p) {
  const int64_t Hq = d.heads, Hkv = d.kv_heads, D = d.head_dim, g = h / (Hq / Hkv);
  const float* qv = q + ((b * d.tokens + t) * Hq + h) * D;
  double top = sinks ? sinks[h] : -INFINITY;
  for (int64_t j = first; j <= t; ++j) {
    const float* kv = k + ((b * d.tokens + j) * Hkv + g) * D;
    double dot = 0.0;
    for (int64_t c = 0; c < D; ++c) dot += static_cast<double>(qv[c]) * kv[c];
    p[j] = dot * d.scale;
    top = std::max(top, p[j]);
  }
  const double sink = sinks ? std::exp(sinks[h] - top) : 0.0;
  double sum = sink;
  for (int64_t j = first; j <= t; ++j) sum += p[j] = std::exp(p[j] - top);
  for (int64_t j = first; j <= t; ++j) p[j] /= sum;
  return sink / sum;
}

int64_t first_key(const AttentionDims& d, int64_t chunk, int64_t t) {
  int64_t first = d.window > 0 ? std::max<int64_t>(0, t - d.window + 1) : 0;
  if (chunk > 0) first = std::max(first, t - t % chunk);
  return first;
}

}  // namespace

void sink_attention_forward(const float* q, const float* k, const float* v, const float* sinks,
                            float* out, const AttentionDims& d, int64_t chunk) {
  const int64_t Hq = d.heads, Hkv = d.kv_heads, D = d.head_dim;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      std::vector<double> p(d.tokens), acc(D);
      const int64_t g = h / (Hq / Hkv);
      for (int64_t t = 0; t < d.tokens; ++t) {
        const int64_t first = first_key(d, chunk, t);
        probabilities(q, k, sinks, d, b, h, t, first, p);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = first; j <= t; ++j) {
          const float* vv = v + ((b * d.tokens + j) * Hkv + g) * D;
          for (int64_t c = 0; c < D; ++c) acc[c] += p[j] * vv[c];
        }
        float* o = out + ((b * d.tokens + t) * Hq + h) * D;
        for (int64_t c = 0; c < D; ++c) o[c] = static_cast<float>(acc[c]);
      }
    }
}

void sink_attention_backward(const float* q, const float* k, const float* v, const float* sinks,
                             const float* dout, float* dq, float* dk, float* dv, float* d_sinks,
                             const AttentionDims& d, int64_t chunk) {
  const int64_t Hq = d.heads, Hkv = d.kv_heads, D = d.head_dim, group = Hq / Hkv;
  std::vector<double> sink_parts(d.batch * Hq, 0.0);  // [B, Hq], summed in order below
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t g = 0; g < Hkv; ++g) {
      std::vector<double> p(d.tokens), dp(d.tokens);
      for (int64_t h = g * group; h < (g + 1) * group; ++h)
        for (int64_t t = 0; t < d.tokens; ++t) {
          const int64_t first = first_key(d, chunk, t);
          const double p_sink = probabilities(q, k, sinks, d, b, h, t, first, p);
          const int64_t qi = ((b * d.tokens + t) * Hq + h) * D;
          double c = 0.0;
          for (int64_t j = first; j <= t; ++j) {
            const int64_t ki = ((b * d.tokens + j) * Hkv + g) * D;
            double dot = 0.0;
            for (int64_t e = 0; e < D; ++e) dot += static_cast<double>(dout[qi + e]) * v[ki + e];
            dp[j] = dot;
            c += p[j] * dot;
            for (int64_t e = 0; e < D; ++e) dv[ki + e] += static_cast<float>(p[j] * dout[qi + e]);
          }
          sink_parts[b * Hq + h] -= p_sink * c;
          for (int64_t j = first; j <= t; ++j) {
            const int64_t ki = ((b * d.tokens + j) * Hkv + g) * D;
            const double ds = p[j] * (dp[j] - c) * d.scale;
            for (int64_t e = 0; e < D; ++e) {
              dq[qi + e] += static_cast<float>(ds * k[ki + e]);
              dk[ki + e] += static_cast<float>(ds * q[qi + e]);
            }
          }
        }
    }
  if (d_sinks)
    for (int64_t h = 0; h < Hq; ++h) {
      double sum = 0.0;
      for (int64_t b = 0; b < d.batch; ++b) sum += sink_parts[b * Hq + h];
      d_sinks[h] += static_cast<float>(sum);
    }
}

void attention_by_document(const std::vector<std::pair<int64_t, int64_t>>& documents,
                           AttentionDims dims, float cap, const float* q, const float* k,
                           const float* v, float* out, const float* dout, float* dq, float* dk,
                           float* dv, const float* sinks, float* d_sinks, int64_t chunk,
                           float* stats, const float* saved_stats) {
  const auto run = [&](const AttentionDims& d, int64_t row) {
    const int64_t qo = row * d.heads * d.head_dim, ko = row * d.kv_heads * d.head_dim;
    const int64_t so = row * d.heads * 2;
    if ((sinks || chunk > 0) && dout)
      sink_attention_backward(q + qo, k + ko, v + ko, sinks, dout + qo, dq + qo, dk + ko, dv + ko,
                              d_sinks, d, chunk);
    else if (sinks || chunk > 0)
      sink_attention_forward(q + qo, k + ko, v + ko, sinks, out + qo, d, chunk);
    else if (dout && cap > 0.0f)
      capped_attention_backward(q + qo, k + ko, v + ko, dout + qo, dq + qo, dk + ko, dv + ko, d,
                                cap);
    else if (dout)
      attention_backward(q + qo, k + ko, v + ko, dout + qo, dq + qo, dk + ko, dv + ko, d,
                         saved_stats + so);
    else if (cap > 0.0f)
      capped_attention_forward(q + qo, k + ko, v + ko, out + qo, d, cap);
    else
      attention_forward_train(q + qo, k + ko, v + ko, out + qo, stats + so, d);
  };
  if (documents.empty()) return run(dims, 0);
  for (const auto& [row, length] : documents) {
    AttentionDims d = dims;
    d.batch = 1;
    d.tokens = length;
    run(d, row);
  }
}

}  // namespace kiln::train
