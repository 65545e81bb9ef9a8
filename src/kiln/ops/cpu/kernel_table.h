// The CPU kernel sets, one per instruction set, as tables of plain function pointers that
// share the contracts of ops/linear.h and ops/attention.h: one linear kernel per weight
// format (as ggml's type traits), so the layers and the op front never switch on a dtype.
// ops/kernels.h picks one set.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/linear.h"
#include "kiln/ops/softmax.h"

namespace kiln::ops::cpu {

using LinearKernel = void (*)(const float* x, const WeightView& weight, const float* bias, float* y,
                              int64_t rows, int64_t in, int64_t out);
using GemmF32Kernel = void (*)(const float* a, bool a_transposed, const float* w, bool w_transposed,
                               float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate);
using SiluGatedKernel = void (*)(const float* gate, const float* up, float* y, int64_t count);
using SiluGatedBackwardKernel = void (*)(const float* gate, const float* up, const float* dy,
                                         float* dgate, float* dup, int64_t count);
using AttentionProbsKernel = void (*)(float* s, int64_t rows, int64_t cols, const int64_t* begin,
                                      const int64_t* end, float* stats);
using AttentionProbsBackwardKernel = void (*)(float* s, float* dp, int64_t rows, int64_t cols,
                                              const int64_t* begin, const int64_t* end,
                                              const float* stats, float scale);
using AdamWKernel = void (*)(float* w, const float* g, float* m, float* v, int64_t n,
                             const AdamWScalars& s);
using AttentionKernel = void (*)(const float* q, const float* k_cache, const float* v_cache,
                                 float* out, const AttentionShape& shape);

// The weight formats linear kernels read, in the order of KernelTable::linear.
inline constexpr int kWeightFormatCount = 10;
inline constexpr DType kWeightFormats[kWeightFormatCount] = {
    DType::F32,      DType::BF16, DType::F16,  DType::Q8_0, DType::Q4_1,
    DType::Q4_1_128, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q4_0};
// The position of `format` in kWeightFormats, or -1 when no linear kernel reads it.
int weight_format_index(DType format);

struct KernelTable {
  const char* name;                             // "reference", "avx2", "avx512"
  LinearKernel linear[kWeightFormatCount];      // contract of ops::linear, per weight format
  AttentionKernel attention;                    // contract of ops::causal_attention
  SiluGatedKernel silu_gated;                   // contract of ops::gated_activation with kSilu
  GemmF32Kernel gemm_f32;                       // contract of ops::gemm_f32
  SiluGatedBackwardKernel silu_gated_backward;  // contract of ops::silu_gated_backward
  AttentionProbsKernel attention_probs;         // contract of ops::attention_probs
  AttentionProbsBackwardKernel attention_probs_backward;  // ops::attention_probs_backward
  AdamWKernel adamw_update;                               // contract of ops::adamw_update
};

// Plain C++ kernels (ops/linear.cc, ops/attention.cc): the arbiter of every fast kernel.
const KernelTable& reference_table();
// AVX2 + FMA + F16C (cpu/avx2.cc). Call only when the CPU has them.
const KernelTable& avx2_table();
// AVX-512 F/BW/VL + AVX512-BF16 (vdpbf16ps) + AVX512-VNNI (vpdpbusd) (cpu/avx512.cc). Call
// only when the CPU has them.
const KernelTable& avx512_table();

}  // namespace kiln::ops::cpu
