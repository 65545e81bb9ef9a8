// Normalization kernels over the last dimension: RMS norm (w and 1 + w) and LayerNorm.
#pragma once

#include <cstdint>

namespace kiln::ops {

// y = x / sqrt(mean(x^2) + eps) * w          (one_plus = false, Llama)
// y = x / sqrt(mean(x^2) + eps) * (1 + w)    (one_plus = true, Gemma)
//   x, y: [rows, dim] f32 (may alias);  weight: [dim] f32, or nullptr (= 1: no weights)
//   inv_rms: [rows] f32, 1 / sqrt(mean(x^2) + eps) per row (for a backward pass), or nullptr
void rms_norm(const float* x, const float* weight, float* y, int64_t rows, int64_t dim, float eps,
              bool one_plus, float* inv_rms = nullptr);

// y = (x - mean) / sqrt(var + eps) * w + b, biased variance.
//   x, y: [rows, dim] f32 (may alias);  weight: [dim] or nullptr (= 1);  bias: [dim] or nullptr
void layer_norm(const float* x, const float* weight, const float* bias, float* y, int64_t rows,
                int64_t dim, float eps);

}  // namespace kiln::ops
