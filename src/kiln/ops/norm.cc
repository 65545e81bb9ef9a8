// Reference normalization kernels; statistics accumulate in double.
#include "kiln/ops/norm.h"

#include <cmath>

namespace kiln::ops {

void rms_norm(const float* x, const float* weight, float* y, int64_t rows, int64_t dim, float eps,
              bool one_plus, float* inv_rms_out) {
  // Rows are independent: threads pay off for a prompt's or a training batch's rows.
#pragma omp parallel for schedule(static) if (rows >= 16 && rows * dim >= (int64_t{1} << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;  // [dim]
    float* yr = y + r * dim;        // [dim]
    double sum_squares = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum_squares += static_cast<double>(xr[i]) * xr[i];
    const float inv_rms =
        static_cast<float>(1.0 / std::sqrt(sum_squares / static_cast<double>(dim) + eps));
    if (inv_rms_out) inv_rms_out[r] = inv_rms;
    for (int64_t i = 0; i < dim; ++i) {
      const float w = weight == nullptr ? 1.0f : one_plus ? 1.0f + weight[i] : weight[i];
      yr[i] = xr[i] * inv_rms * w;
    }
  }
}

void layer_norm(const float* x, const float* weight, const float* bias, float* y, int64_t rows,
                int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;  // [dim]
    float* yr = y + r * dim;        // [dim]
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum += xr[i];
    const double mean = sum / static_cast<double>(dim);
    double sum_squares = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum_squares += (xr[i] - mean) * (xr[i] - mean);
    const double inv_std = 1.0 / std::sqrt(sum_squares / static_cast<double>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) {
      float v = static_cast<float>((xr[i] - mean) * inv_std);
      if (weight) v *= weight[i];
      if (bias) v += bias[i];
      yr[i] = v;
    }
  }
}

}  // namespace kiln::ops
