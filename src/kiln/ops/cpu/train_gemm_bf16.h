// The instruction-set kernels behind ops::gemm_bf16 (cpu/train_gemm_bf16.inc, compiled into
// cpu/avx512.cc and cpu/avx2.cc). Call each only when the CPU has its instructions.
#pragma once

#include <cstdint>

namespace kiln::ops::cpu {

void avx512_gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed,
                      float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate);
void avx2_gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed, float* y,
                    int64_t rows, int64_t depth, int64_t out, bool accumulate);

// A weight packed once for several products (ops::Bf16Weight): its size in 32-bit words, the
// packing (on all threads), and the GEMM that reads it.
int64_t avx512_bf16_weight_words(int64_t out, int64_t depth);
void avx512_pack_bf16_weight(const float* w, bool w_transposed, int64_t out, int64_t depth,
                             uint32_t* dst);
void avx512_gemm_bf16_packed(const float* a, bool a_transposed, const uint32_t* w, float* y,
                             int64_t rows, int64_t depth, int64_t out, bool accumulate);
int64_t avx2_bf16_weight_words(int64_t out, int64_t depth);
void avx2_pack_bf16_weight(const float* w, bool w_transposed, int64_t out, int64_t depth,
                           uint32_t* dst);
void avx2_gemm_bf16_packed(const float* a, bool a_transposed, const uint32_t* w, float* y,
                           int64_t rows, int64_t depth, int64_t out, bool accumulate);

}  // namespace kiln::ops::cpu
