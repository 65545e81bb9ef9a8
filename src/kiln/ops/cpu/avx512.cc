// AVX-512 kernels (16 f32 lanes) with AVX512-BF16: bf16-weight GEMMs multiply bf16 pairs
// with vdpbf16ps (activations rounded to bf16 once, when packed); GEMVs widen bf16/f16
// weights to f32 and keep the activations in f32; quantized weights use int8 dot products
// with vpdpbusd (VNNI) against int8 activations. Built with the AVX-512 flags set in
// CMakeLists.txt; called only after ops/kernels.cc has checked the CPU.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kiln/core/quant.h"
#include "kiln/core/tensor.h"
#include "kiln/ops/cpu/kernel_table.h"
#include "kiln/ops/cpu/scratch.h"
#include "kiln/ops/cpu/simd_avx512.h"

namespace kiln::ops::cpu::avx512 {
namespace {

using S = Avx512;
#include "kiln/ops/cpu/linear_kernels.inc"
// (after linear_kernels.inc: uses its Vec and kLanes)
#include "kiln/ops/cpu/attention_kernels.inc"
#include "kiln/ops/cpu/elementwise_kernels.inc"

// f32 -> bf16, rounding to nearest even (finite inputs; as vcvtneps2bf16 does).
inline uint32_t round_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// The bf16 path of the GEMM: activations packed as pairs of bf16 (element 2p in the low
// half, 2p + 1 in the high half) [ceil(in / 2)][kTokens]; weights bf16 read in place, two
// at a time, and multiplied with vdpbf16ps (32 multiply-adds per instruction).
struct Bf16Path {
  using Packed = uint32_t;
  static constexpr int kRows = 6;
  static constexpr int kVecs = 4;
  static constexpr int64_t kTokens = kVecs * kLanes;
  static_assert(kChunkDepth % 2 == 0, "a depth chunk must hold whole pairs");

  static constexpr bool kPacksTransposed = false;
  static int64_t packed_depth(int64_t in) { return (in + 1) / 2; }
  static int64_t packed_offset(int64_t k0) { return k0 / 2; }

  // dst[p][j] = (x[j][2p], x[j][2p + 1]) in bf16 for j < valid, 0 for later j.  x: [valid, in]
  static void pack(const float* x, int64_t valid, int64_t in, uint32_t* dst) {
    const int64_t pairs = packed_depth(in);
    auto* row_pairs = static_cast<uint32_t*>(
        thread_scratch(ScratchSlot::kPackRow, sizeof(uint32_t) * pairs));  // [pairs]
    for (int64_t j = 0; j < kTokens; ++j) {
      if (j >= valid) {
        for (int64_t p = 0; p < pairs; ++p) dst[p * kTokens + j] = 0;
        continue;
      }
      const float* row = x + j * in;  // [in]
      int64_t p = 0;
      for (; 2 * p + 2 * kLanes <= in; p += kLanes) {
        const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 2 * p + kLanes),
                                                  _mm512_loadu_ps(row + 2 * p));
        _mm512_storeu_si512(row_pairs + p, reinterpret_cast<const __m512i&>(both));
      }
      for (; p < pairs; ++p) {
        const uint32_t high = 2 * p + 1 < in ? round_to_bf16(row[2 * p + 1]) : 0;
        row_pairs[p] = round_to_bf16(row[2 * p]) | high << 16;
      }
      for (p = 0; p < pairs; ++p) dst[p * kTokens + j] = row_pairs[p];
    }
  }

  static WeightRows<uint16_t> weights(const WeightView& weight, int64_t in, int64_t o, int,
                                      int64_t k0, int64_t) {
    return {static_cast<const uint16_t*>(weight.data) + o * in + k0, in};
  }

  // tile[r][j] = sum_k w[r][k] * packed[k / 2][j] (half k % 2) for r < kM, k < kc.
  template <int kM>
  static void tile_rows(WeightRows<uint16_t> w, const uint32_t* packed, int64_t kc, float* tile) {
    __m512 acc[kM][kVecs];
    for (int r = 0; r < kM; ++r)
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_setzero_ps();
    const int64_t pairs = kc / 2;
    for (int64_t p = 0; p < pairs; ++p) {
      __m512bh xv[kVecs];
      for (int v = 0; v < kVecs; ++v)
        xv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(packed + p * kTokens + v * kLanes));
      for (int r = 0; r < kM; ++r) {
        uint32_t pair;
        std::memcpy(&pair, w.data + r * w.stride + 2 * p, sizeof(pair));
        const __m512bh wb = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
        for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], wb, xv[v]);
      }
    }
    if (kc % 2) {  // the last input alone: its packed pair holds (x, 0)
      __m512bh xv[kVecs];
      for (int v = 0; v < kVecs; ++v)
        xv[v] =
            reinterpret_cast<__m512bh>(_mm512_loadu_si512(packed + pairs * kTokens + v * kLanes));
      for (int r = 0; r < kM; ++r) {
        const __m512bh wb =
            reinterpret_cast<__m512bh>(_mm512_set1_epi32(w.data[r * w.stride + 2 * pairs]));
        for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], wb, xv[v]);
      }
    }
    for (int r = 0; r < kM; ++r)
      for (int v = 0; v < kVecs; ++v) _mm512_storeu_ps(tile + r * kTokens + v * kLanes, acc[r][v]);
  }
};

void linear_bf16(const float* x, const WeightView& weight, const float* bias, float* y,
                 int64_t rows, int64_t in, int64_t out) {
  if (rows < kGemmMinRows) return gemv<DType::BF16>(x, weight, bias, y, rows, in, out);
  gemm<Bf16Path>(x, weight, bias, y, rows, in, out);
}

}  // namespace
}  // namespace kiln::ops::cpu::avx512

namespace kiln::ops::cpu {
const KernelTable& avx512_table() {
  static const KernelTable table{
      "avx512",
      {&avx512::gemv_or_gemm_f32<DType::F32>, &avx512::linear_bf16,
       &avx512::gemv_or_gemm_f32<DType::F16>, &avx512::quantized_linear<DType::Q8_0>,
       &avx512::quantized_linear<DType::Q4_1>, &avx512::quantized_linear<DType::Q4_1_128>},
      &avx512::attention,
      &avx512::silu_gated,
      &avx512::gemm_f32,
      &avx512::silu_gated_backward};
  return table;
}
}  // namespace kiln::ops::cpu
