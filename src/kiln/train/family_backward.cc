#include "kiln/train/family_backward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/activation.h"

namespace kiln::train {

void layer_norm_forward(const float* x, const float* weight, const float* bias, float* y,
                        int64_t rows, int64_t dim, float eps, float* mean, float* inv_std) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;  // [dim]
    float* yr = y + r * dim;        // [dim]
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i];
    const double mu = sum / static_cast<double>(dim);
    double var = 0.0;
    for (int64_t i = 0; i < dim; ++i) var += (xr[i] - mu) * (xr[i] - mu);
    const double inv = 1.0 / std::sqrt(var / static_cast<double>(dim) + eps);
    mean[r] = static_cast<float>(mu);
    inv_std[r] = static_cast<float>(inv);
    for (int64_t i = 0; i < dim; ++i) {  // rounded as ops::layer_norm does (bitwise the same)
      float v = static_cast<float>((xr[i] - mu) * inv);
      if (weight) v *= weight[i];
      if (bias) v += bias[i];
      yr[i] = v;
    }
  }
}

void layer_norm_backward(const float* x, const float* weight, const float* mean,
                         const float* inv_std, const float* dy, float* dx, float* dweight,
                         float* dbias, int64_t rows, int64_t dim) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;   // [dim]
      const float* gr = dy + r * dim;  // [dim]
      float* dr = dx + r * dim;        // [dim]
      const double mu = mean[r], inv = inv_std[r];
      double sum_g = 0.0, sum_gx = 0.0;  // sum g, sum g xh; g = dy * w
      for (int64_t i = 0; i < dim; ++i) {
        const double g = weight ? static_cast<double>(gr[i]) * weight[i] : gr[i];
        sum_g += g;
        sum_gx += g * (xr[i] - mu) * inv;
      }
      const double mean_g = sum_g / static_cast<double>(dim);
      const double mean_gx = sum_gx / static_cast<double>(dim);
      for (int64_t i = 0; i < dim; ++i) {
        const double g = weight ? static_cast<double>(gr[i]) * weight[i] : gr[i];
        const double xh = (xr[i] - mu) * inv;
        dr[i] += static_cast<float>(inv * (g - mean_g - xh * mean_gx));
      }
    }
  }
  if (!dweight && !dbias) return;
  // Columns in fixed blocks, each summed over the rows in order (thread-count invariant).
  constexpr int64_t kColumns = 64;
  const int64_t blocks = (dim + kColumns - 1) / kColumns;
#pragma omp parallel for schedule(static) if (rows * dim >= (int64_t{1} << 16))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t i0 = blk * kColumns, i1 = std::min(dim, i0 + kColumns);
    double sum_w[kColumns] = {}, sum_b[kColumns] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const double mu = mean[r], inv = inv_std[r];
      const float* xr = x + r * dim;
      const float* gr = dy + r * dim;
      for (int64_t i = i0; i < i1; ++i) {
        sum_w[i - i0] += static_cast<double>(gr[i]) * (xr[i] - mu) * inv;
        sum_b[i - i0] += gr[i];
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      if (dweight) dweight[i] += static_cast<float>(sum_w[i - i0]);
      if (dbias) dbias[i] += static_cast<float>(sum_b[i - i0]);
    }
  }
}

void softcap_forward(float* x, int64_t count, float cap) {
#pragma omp parallel for schedule(static) if (count >= (int64_t{1} << 16))
  for (int64_t i = 0; i < count; ++i) x[i] = std::tanh(x[i] / cap) * cap;
}

void softcap_backward(const float* y, float* d, int64_t count, float cap) {
#pragma omp parallel for schedule(static) if (count >= (int64_t{1} << 16))
  for (int64_t i = 0; i < count; ++i) {
    const float t = y[i] / cap;
    d[i] *= 1.0f - t * t;
  }
}

void capped_attention_forward(const float* q, const float* k, const float* v, float* out,
                              const AttentionDims& dims, float cap) {
  attention_forward(q, k, v, out, dims, cap);
}

void capped_attention_backward(const float* q, const float* k, const float* v, const float* dout,
                               float* dq, float* dk, float* dv, const AttentionDims& dims,
                               float cap) {
  attention_backward_reference(q, k, v, dout, dq, dk, dv, dims, cap);
}

void activation_forward(Activation activation, const float* x, float* h, int64_t count) {
  if (h != x) std::memcpy(h, x, sizeof(float) * count);
  ops::apply_activation(activation, h, count);
}

void activation_backward(Activation activation, const float* x, const float* dh, float* dx,
                         int64_t count) {
  if (!dx) return;
#pragma omp parallel for schedule(static) if (count >= (int64_t{1} << 14))
  for (int64_t i = 0; i < count; ++i) {
    const double z = x[i];
    double derivative = 0.0;
    switch (activation) {
      case Activation::kSilu: {
        const double sig = 1.0 / (1.0 + std::exp(-z));
        derivative = sig * (1.0 + z * (1.0 - sig));
        break;
      }
      case Activation::kGeluExact:  // 0.5 z (1 + erf(z / sqrt 2))
        derivative = 0.5 * (1.0 + std::erf(z / std::sqrt(2.0))) +
                     z * std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI);
        break;
      case Activation::kGeluTanh: {  // 0.5 z (1 + tanh(c (z + 0.044715 z^3)))
        const double c = std::sqrt(2.0 / M_PI);
        const double th = std::tanh(c * (z + 0.044715 * z * z * z));
        derivative =
            0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * c * (1.0 + 3.0 * 0.044715 * z * z);
        break;
      }
      case Activation::kRelu:
        derivative = z > 0.0 ? 1.0 : 0.0;
        break;
      case Activation::kReluSquared:
        derivative = z > 0.0 ? 2.0 * z : 0.0;
        break;
    }
    dx[i] += static_cast<float>(dh[i] * derivative);
  }
}

double lm_head_cross_entropy_capped(const float* h, const float* weight, const float* bias,
                                    const int32_t* targets, float* dh, float* dw, float* db,
                                    int64_t rows, int64_t hidden, int64_t vocab, float cap,
                                    int64_t chunk_rows) {
  check(chunk_rows > 0, "lm_head_cross_entropy: chunk_rows must be positive");
  const int64_t count = count_targets(targets, rows);
  if (count == 0) return 0.0;
  const double weight_per_target = 1.0 / static_cast<double>(count);
  const int64_t chunk = std::min(chunk_rows, rows);
  std::vector<float> logits(chunk * vocab), dlogits(chunk * vocab);  // [chunk, vocab]
  double total = 0.0;
  for (int64_t start = 0; start < rows; start += chunk_rows) {
    const int64_t n = std::min(chunk_rows, rows - start);
    const float* hc = h + start * hidden;  // [n, hidden]
    linear_forward(hc, weight, bias, logits.data(), n, hidden, vocab);
    if (cap > 0.0f) softcap_forward(logits.data(), n * vocab, cap);
    total += cross_entropy_rows(logits.data(), targets + start, dlogits.data(), n, vocab,
                                weight_per_target);
    if (cap > 0.0f) softcap_backward(logits.data(), dlogits.data(), n * vocab, cap);
    linear_backward(hc, weight, dlogits.data(), dh ? dh + start * hidden : nullptr, dw, db, n,
                    hidden, vocab);
  }
  return total / static_cast<double>(count);
}

}  // namespace kiln::train
