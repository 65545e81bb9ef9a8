// The linear front (checks, then the active kernel set) and its reference kernel: one
// weight row at a time, converted to f32 in a per-thread buffer.
#include "kiln/ops/linear.h"

#include <string>

#include "kiln/core/error.h"
#include "kiln/core/tensor.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/cpu/scratch.h"
#include "kiln/ops/kernels.h"

namespace kiln::ops {

namespace {
void check_weight_dtype(DType weight_dtype) {
  if (weight_dtype != DType::F32 && weight_dtype != DType::BF16 && weight_dtype != DType::F16)
    throw Error("linear: unsupported weight dtype " + std::string(dtype_name(weight_dtype)));
}
}  // namespace

void linear(const float* x, const void* weight, DType weight_dtype, const float* bias, float* y,
            int64_t rows, int64_t in, int64_t out) {
  check_weight_dtype(weight_dtype);
  active_kernels().linear(x, weight, weight_dtype, bias, y, rows, in, out);
}

void linear_reference(const float* x, const void* weight, DType weight_dtype, const float* bias,
                      float* y, int64_t rows, int64_t in, int64_t out) {
  check_weight_dtype(weight_dtype);
  const auto* w_bytes = static_cast<const std::byte*>(weight);
  const size_t row_bytes = static_cast<size_t>(in) * dtype_size(weight_dtype);
  // Threads pay off only when they share enough multiply-adds to amortize waking them.
  const bool parallel = rows * in * out >= (int64_t{1} << 18);
#pragma omp parallel if (parallel)
  {
    auto* converted = static_cast<float*>(
        cpu::thread_scratch(cpu::ScratchSlot::kWeightRow, sizeof(float) * in));  // [in]
#pragma omp for schedule(static)
    for (int64_t o = 0; o < out; ++o) {
      const float* w_row;  // [in]
      if (weight_dtype == DType::F32) {
        w_row = reinterpret_cast<const float*>(w_bytes + o * row_bytes);
      } else {
        convert_to_f32(w_bytes + o * row_bytes, weight_dtype, converted, in);
        w_row = converted;
      }
      const float b = bias ? bias[o] : 0.0f;
      for (int64_t n = 0; n < rows; ++n) {
        const float* x_row = x + n * in;  // [in]
        float sum = 0.0f;
        for (int64_t i = 0; i < in; ++i) sum += x_row[i] * w_row[i];
        y[n * out + o] = sum + b;
      }
    }
  }
}

void gemm_f32(const float* a, bool a_transposed, const float* w, float* y, int64_t rows,
              int64_t depth, int64_t out, bool accumulate) {
  active_kernels().gemm_f32(a, a_transposed, w, y, rows, depth, out, accumulate);
}

void gemm_f32_reference(const float* a, bool a_transposed, const float* w, float* y, int64_t rows,
                        int64_t depth, int64_t out, bool accumulate) {
#pragma omp parallel for schedule(static) if (rows * depth * out >= (int64_t{1} << 18))
  for (int64_t o = 0; o < out; ++o) {
    const float* w_row = w + o * depth;  // [depth]
    for (int64_t j = 0; j < rows; ++j) {
      float sum = 0.0f;
      if (a_transposed) {
        for (int64_t k = 0; k < depth; ++k) sum += a[k * rows + j] * w_row[k];
      } else {
        for (int64_t k = 0; k < depth; ++k) sum += a[j * depth + k] * w_row[k];
      }
      y[j * out + o] = accumulate ? y[j * out + o] + sum : sum;
    }
  }
}

}  // namespace kiln::ops

namespace kiln::ops::cpu {
const KernelTable& reference_table() {
  static const KernelTable table{"reference", &linear_reference, &causal_attention_reference,
                                 &silu_gated_reference, &gemm_f32_reference};
  return table;
}
}  // namespace kiln::ops::cpu
