// The CPU kernel sets, one per instruction set, as tables of plain function pointers that
// share the contracts of ops/linear.h and ops/attention.h. ops/kernels.h picks one.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.h"
#include "kiln/ops/attention.h"

namespace kiln::ops::cpu {

using LinearKernel = void (*)(const float* x, const void* weight, DType weight_dtype,
                              const float* bias, float* y, int64_t rows, int64_t in, int64_t out);
using GemmF32Kernel = void (*)(const float* a, bool a_transposed, const float* w, float* y,
                               int64_t rows, int64_t depth, int64_t out, bool accumulate);
using SiluGatedKernel = void (*)(const float* gate, const float* up, float* y, int64_t count);
using AttentionKernel = void (*)(const float* q, const float* k_cache, const float* v_cache,
                                 float* out, const AttentionShape& shape);

struct KernelTable {
  const char* name;            // "reference", "avx2", "avx512"
  LinearKernel linear;         // contract of ops::linear
  AttentionKernel attention;   // contract of ops::causal_attention
  SiluGatedKernel silu_gated;  // contract of ops::gated_activation with Activation::kSilu
  GemmF32Kernel gemm_f32;      // contract of ops::gemm_f32
};

// Plain C++ kernels (ops/linear.cc, ops/attention.cc): the arbiter of every fast kernel.
const KernelTable& reference_table();
// AVX2 + FMA + F16C (cpu/avx2.cc). Call only when the CPU has them.
const KernelTable& avx2_table();
// AVX-512 F/BW/VL + AVX512-BF16 (vdpbf16ps) (cpu/avx512.cc). Call only when the CPU has them.
const KernelTable& avx512_table();

}  // namespace kiln::ops::cpu
