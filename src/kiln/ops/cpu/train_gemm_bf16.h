// The instruction-set kernels behind ops::gemm_bf16 (cpu/train_gemm_bf16.inc, compiled into
// cpu/avx512.cc and cpu/avx2.cc). Call each only when the CPU has its instructions.
#pragma once

#include <cstdint>

namespace kiln::ops::cpu {

void avx512_gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed,
                      float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate);
void avx2_gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed, float* y,
                    int64_t rows, int64_t depth, int64_t out, bool accumulate);

}  // namespace kiln::ops::cpu
