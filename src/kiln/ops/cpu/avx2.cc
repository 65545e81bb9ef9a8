// AVX2 + FMA + F16C kernels (8 f32 lanes): GEMVs widen bf16/f16 weights to f32; the GEMM
// converts each tile of bf16/f16 weight rows to f32 and multiplies in f32; quantized weights
// use int8 dot products (vpmaddubsw + vpmaddwd) with int8 activations in both. Built with the
// AVX2 flags set in CMakeLists.txt; called only after ops/kernels.cc has checked the CPU.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kiln/core/quant.h"
#include "kiln/core/tensor.h"
#include "kiln/ops/cpu/kernel_table.h"
#include "kiln/ops/cpu/scratch.h"
#include "kiln/ops/cpu/simd_avx2.h"
#include "kiln/ops/cpu/train_gemm_bf16.h"
#include "kiln/ops/cpu/work_pool.h"

namespace kiln::ops::cpu::avx2 {
namespace {

using S = Avx2;
#include "kiln/ops/cpu/linear_kernels.inc"
// (after linear_kernels.inc: uses its Vec and kLanes)
#include "kiln/ops/cpu/attention_kernels.inc"
#include "kiln/ops/cpu/elementwise_kernels.inc"
// (after linear_kernels.inc: uses its GEMV, GEMM and Int8Path)
#include "kiln/ops/cpu/kquant_kernels.inc"

// (after linear_kernels.inc) the bf16 GEMM of mixed-precision training
#include "kiln/ops/cpu/train_gemm_bf16.inc"

}  // namespace
}  // namespace kiln::ops::cpu::avx2

namespace kiln::ops::cpu {
void avx2_gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed, float* y,
                    int64_t rows, int64_t depth, int64_t out, bool accumulate) {
  avx2::train_bf16::gemm(a, a_transposed, w, w_transposed, y, rows, depth, out, accumulate);
}
int64_t avx2_bf16_weight_words(int64_t out, int64_t depth) {
  return avx2::train_bf16::packed_weight_words(out, depth);
}
void avx2_pack_bf16_weight(const float* w, bool w_transposed, int64_t out, int64_t depth,
                           uint32_t* dst) {
  avx2::train_bf16::pack_weight(w, w_transposed, out, depth, dst);
}
void avx2_gemm_bf16_packed(const float* a, bool a_transposed, const uint32_t* w, float* y,
                           int64_t rows, int64_t depth, int64_t out, bool accumulate) {
  avx2::train_bf16::gemm_packed(a, a_transposed, w, y, rows, depth, out, accumulate);
}

const KernelTable& avx2_table() {
  static const KernelTable table{
      "avx2",
      {&avx2::gemv_or_gemm_f32<DType::F32>, &avx2::gemv_or_gemm_f32<DType::BF16>,
       &avx2::gemv_or_gemm_f32<DType::F16>, &avx2::quantized_linear<DType::Q8_0>,
       &avx2::quantized_linear<DType::Q4_1>, &avx2::quantized_linear<DType::Q4_1_128>,
       &avx2::kquant_linear<DType::Q4_K>, &avx2::kquant_linear<DType::Q5_K>,
       &avx2::kquant_linear<DType::Q6_K>, &avx2::quantized_linear<DType::Q4_0>},
      &avx2::attention,
      &avx2::silu_gated,
      &avx2::gemm_f32,
      &avx2::silu_gated_backward,
      &avx2::attention_probs,
      &avx2::attention_probs_backward,
      &avx2::adamw_update};
  return table;
}
}  // namespace kiln::ops::cpu
