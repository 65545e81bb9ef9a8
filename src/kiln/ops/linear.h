// Linear layer kernel: y = x W^T + b with W stored [out, in] in f32, bf16 or f16.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.h"

namespace kiln::ops {

// y[n, o] = sum_i x[n, i] * W[o, i] + bias[o], for n < rows.
//   x:      [rows, in]  f32
//   weight: [out, in]   in `weight_dtype` (F32, BF16 or F16); each row is converted to f32
//                       on the fly, never as a whole copy
//   bias:   [out]       f32, or nullptr
//   y:      [rows, out] f32 (must not alias x)
// Parallel over output rows (OpenMP). Throws Error for other weight dtypes.
void linear(const float* x, const void* weight, DType weight_dtype, const float* bias, float* y,
            int64_t rows, int64_t in, int64_t out);

}  // namespace kiln::ops
