// Linear layer kernel: y = x W^T + b with W stored [out, in] in f32, bf16 or f16.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.h"

namespace kiln::ops {

// y[n, o] = sum_i x[n, i] * W[o, i] + bias[o], for n < rows.
//   x:      [rows, in]  f32
//   weight: [out, in]   in `weight_dtype` (F32, BF16 or F16), read in place (never copied
//                       or converted as a whole)
//   bias:   [out]       f32, or nullptr
//   y:      [rows, out] f32 (must not alias x)
// Runs the active kernel set (ops/kernels.h), on all OpenMP threads. With bf16 weights and
// at least 16 rows the AVX-512 kernel rounds x to bf16 (as a bf16 model computes); the
// other paths keep x in f32. Throws Error for other weight dtypes.
void linear(const float* x, const void* weight, DType weight_dtype, const float* bias, float* y,
            int64_t rows, int64_t in, int64_t out);

// The reference kernel of linear(): plain loops, one weight row converted to f32 at a time.
void linear_reference(const float* x, const void* weight, DType weight_dtype, const float* bias,
                      float* y, int64_t rows, int64_t in, int64_t out);

// The f32 GEMM of linear() with two options that training's backward uses:
//   y[j, o] (+)= sum_k a(j, k) * w[o, k]   for j < rows, o < out, k < depth
//   a(j, k) = a[j * depth + k] ([rows, depth]), or a[k * rows + j] when a_transposed
//   ([depth, rows]: the GEMM packs its panels from either layout, no transposed copy);
//   w: [out, depth] f32;  y: [rows, out], overwritten, or added to when `accumulate`.
// Every output element is summed in an order that depends on the shapes only (never on the
// thread count). Runs the active kernel set on all OpenMP threads.
void gemm_f32(const float* a, bool a_transposed, const float* w, float* y, int64_t rows,
              int64_t depth, int64_t out, bool accumulate);
// Its reference kernel: plain loops.
void gemm_f32_reference(const float* a, bool a_transposed, const float* w, float* y, int64_t rows,
                        int64_t depth, int64_t out, bool accumulate);

}  // namespace kiln::ops
