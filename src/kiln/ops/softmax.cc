// Reference softmax: max-subtracted exponentials, normalized by their sum.
#include "kiln/ops/softmax.h"

#include <algorithm>
#include <cmath>

#include "kiln/ops/kernels.h"

namespace kiln::ops {

void softmax(const float* x, float* y, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;  // [dim]
    float* yr = y + r * dim;        // [dim]
    const float max_value = *std::max_element(xr, xr + dim);
    float sum = 0.0f;
    for (int64_t i = 0; i < dim; ++i) {
      yr[i] = std::exp(xr[i] - max_value);
      sum += yr[i];
    }
    for (int64_t i = 0; i < dim; ++i) yr[i] /= sum;
  }
}

}  // namespace kiln::ops

namespace kiln::ops {

void attention_probs(float* s, int64_t rows, int64_t cols, const int64_t* begin, const int64_t* end,
                     float* stats) {
  active_kernels().attention_probs(s, rows, cols, begin, end, stats);
}

void attention_probs_reference(float* s, int64_t rows, int64_t cols, const int64_t* begin,
                               const int64_t* end, float* stats) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * cols;  // [cols]
    float max_score = -INFINITY;
    for (int64_t j = begin[i]; j < end[i]; ++j) max_score = std::max(max_score, row[j]);
    float sum = 0.0f;
    for (int64_t j = begin[i]; j < end[i]; ++j) {
      row[j] = std::exp(row[j] - max_score);
      sum += row[j];
    }
    const float inverse = 1.0f / sum;
    for (int64_t j = 0; j < cols; ++j)
      row[j] = j >= begin[i] && j < end[i] ? row[j] * inverse : 0.0f;
    stats[2 * i] = max_score;
    stats[2 * i + 1] = inverse;
  }
}

void attention_probs_backward(float* s, float* dp, int64_t rows, int64_t cols, const int64_t* begin,
                              const int64_t* end, const float* stats, float scale) {
  active_kernels().attention_probs_backward(s, dp, rows, cols, begin, end, stats, scale);
}

void attention_probs_backward_reference(float* s, float* dp, int64_t rows, int64_t cols,
                                        const int64_t* begin, const int64_t* end,
                                        const float* stats, float scale) {
  for (int64_t i = 0; i < rows; ++i) {
    float* p = s + i * cols;    // [cols]
    float* ds = dp + i * cols;  // [cols]
    float weighted = 0.0f;      // sum_j p_j dp_j
    for (int64_t j = begin[i]; j < end[i]; ++j) {
      p[j] = std::exp(p[j] - stats[2 * i]) * stats[2 * i + 1];
      weighted += p[j] * ds[j];
    }
    for (int64_t j = 0; j < cols; ++j) {
      if (j >= begin[i] && j < end[i])
        ds[j] = p[j] * (ds[j] - weighted) * scale;
      else
        p[j] = ds[j] = 0.0f;
    }
  }
}

void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  active_kernels().adamw_update(w, g, m, v, n, s);
}

void adamw_update_reference(float* w, const float* g, float* m, float* v, int64_t n,
                            const AdamWScalars& s) {
  const float one_minus_beta1 = 1.0f - s.beta1, one_minus_beta2 = 1.0f - s.beta2;
#pragma omp parallel for schedule(static) if (n >= 4096)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * s.clip;
    w[i] *= s.decay;
    m[i] = m[i] * s.beta1 + gi * one_minus_beta1;
    v[i] = v[i] * s.beta2 + gi * gi * one_minus_beta2;
    const float denom = std::sqrt(v[i]) / s.bias_correction2_sqrt + s.eps;
    w[i] -= s.step_size * (m[i] / denom);
  }
}

}  // namespace kiln::ops
