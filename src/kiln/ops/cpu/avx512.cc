// AVX-512 kernels (16 f32 lanes) with AVX512-BF16: bf16-weight GEMMs multiply bf16 pairs
// with vdpbf16ps (activations rounded to bf16 once, when packed); the bf16-weight GEMV too,
// with each activation split into two bf16 parts (ops::Bf16Gemv); the f16 GEMV widens the
// weights to f32 and keeps the activations in f32; quantized weights use int8 dot products
// with vpdpbusd (VNNI) against int8 activations, in the GEMV (512-bit, below) and the GEMM
// (linear_kernels.inc). Built with the AVX-512 flags set in
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
#include "kiln/ops/cpu/train_gemm_bf16.h"
#include "kiln/ops/cpu/work_pool.h"
#include "kiln/ops/kernels.h"

namespace kiln::ops::cpu::avx512 {
namespace {

using S = Avx512;
#include "kiln/ops/cpu/linear_kernels.inc"
// (after linear_kernels.inc: uses its Vec and kLanes)
#include "kiln/ops/cpu/attention_kernels.inc"
#include "kiln/ops/cpu/elementwise_kernels.inc"
// (after linear_kernels.inc: uses its GEMV, GEMM and Int8Path)
#include "kiln/ops/cpu/kquant_kernels.inc"

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
  template <int kM, int kV = kVecs>
  static void tile_rows(WeightRows<uint16_t> w, const uint32_t* packed, int64_t kc, float* tile) {
    __m512 acc[kM][kV];
    for (int r = 0; r < kM; ++r)
      for (int v = 0; v < kV; ++v) acc[r][v] = _mm512_setzero_ps();
    const int64_t pairs = kc / 2;
    for (int64_t p = 0; p < pairs; ++p) {
      __m512bh xv[kV];
      for (int v = 0; v < kV; ++v)
        xv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(packed + p * kTokens + v * kLanes));
      for (int r = 0; r < kM; ++r) {
        uint32_t pair;
        std::memcpy(&pair, w.data + r * w.stride + 2 * p, sizeof(pair));
        const __m512bh wb = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
        for (int v = 0; v < kV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], wb, xv[v]);
      }
    }
    if (kc % 2) {  // the last input alone: its packed pair holds (x, 0)
      __m512bh xv[kV];
      for (int v = 0; v < kV; ++v)
        xv[v] =
            reinterpret_cast<__m512bh>(_mm512_loadu_si512(packed + pairs * kTokens + v * kLanes));
      for (int r = 0; r < kM; ++r) {
        const __m512bh wb =
            reinterpret_cast<__m512bh>(_mm512_set1_epi32(w.data[r * w.stride + 2 * pairs]));
        for (int v = 0; v < kV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], wb, xv[v]);
      }
    }
    for (int r = 0; r < kM; ++r)
      for (int v = 0; v < kV; ++v) _mm512_storeu_ps(tile + r * kTokens + v * kLanes, acc[r][v]);
  }
};

// ---- The quantized GEMV on 512-bit registers -------------------------------------------
// Where block b (of 32 inputs) of a weight row keeps its values and its f16 scale (and
// minimum: the 2 bytes after the scale), in bytes from the row's start.
template <DType kFormat>
constexpr int64_t values_offset(int64_t b) {
  if constexpr (kFormat == DType::Q8_0) return 34 * b + 2;
  if constexpr (kFormat == DType::Q4_1) return 20 * b + 4;
  if constexpr (kFormat == DType::Q4_0) return 18 * b + 2;
  return 68 * (b >> 2) + 4 + 16 * (b & 3);
}
template <DType kFormat>
constexpr int64_t scale_offset(int64_t b) {
  if constexpr (kFormat == DType::Q8_0) return 34 * b;
  if constexpr (kFormat == DType::Q4_1) return 20 * b;
  if constexpr (kFormat == DType::Q4_0) return 18 * b;
  return 68 * (b >> 2);
}

// The Q4_1 / Q4_1_128 / Q4_0 row kernel of qgemv on AVX-512: four blocks of 32 per pass of two
// vpdpbusd (low and high nibbles); the scales of 16 blocks are gathered at once and multiplied
// by the activations' scales in one instruction, then spread to each block's lanes (vpermps).
// Q4_0 runs as Q4_1 with the minimum -8 d; whole groups of 16 blocks of Q4_1 and Q4_0 take
// group16's permutations, a row's last blocks the loads and the gather (byte offsets).
// Each row's sums are formed in the same order whatever rows share the call.
template <DType kFormat, int kRows>
struct Qgemv512 {
  static_assert(kFormat != DType::Q8_0, "Q8_0 rows run on Q8Gemv512");

  // Q4: four blocks per step. The activations are reordered once per call so that one
  // register holds elements 0..15 of four blocks and the next elements 16..31, as one
  // register of 64 stored bytes unpacks (low nibbles, high nibbles).
  //   reordered: [rows][quads][2][64] int8 (quads = blocks rounded up to 4, zero padded)
  template <bool kWhole>
  static void quad(const int8_t* reordered, int64_t quads, const std::byte* row, int64_t b,
                   int valid_blocks, int first, const __m512* scales, __m512 (*acc)[2]) {
    __m512i bytes;
    if constexpr (kFormat == DType::Q4_1_128) {
      bytes = _mm512_loadu_si512(row + values_offset<kFormat>(b));
    } else if constexpr (kWhole) {
      const auto set = [&](int i) {
        return _mm_loadu_si128(
            reinterpret_cast<const __m128i*>(row + values_offset<kFormat>(b + i)));
      };
      bytes = _mm512_inserti32x4(
          _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(set(0)), set(1), 1), set(2),
                             2),
          set(3), 3);
    } else {
      bytes = _mm512_setzero_si512();
      for (int i = 0; i < valid_blocks; ++i)
        bytes = _mm512_mask_loadu_epi32(
            bytes, static_cast<__mmask16>(0xfu << (4 * i)),
            reinterpret_cast<const int*>(row + values_offset<kFormat>(b + i)) - 4 * i);
    }
    const __m512i mask = _mm512_set1_epi8(0x0f);
    const __m512i low = _mm512_and_si512(bytes, mask);
    const __m512i high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), mask);
    const __m512i index =
        _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                         _mm512_set1_epi32(first));
    for (int r = 0; r < kRows; ++r) {
      const int8_t* xq = reordered + (r * quads + b / 4) * 128;
      const __m512i dot = _mm512_dpbusd_epi32(
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, _mm512_loadu_si512(xq)), high,
          _mm512_loadu_si512(xq + 64));
      acc[r][(first >> 2) & 1] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(index, scales[r]),
                          acc[r][(first >> 2) & 1]);
    }
  }

  // 16 whole blocks from block b0, read as quads of four blocks: two loads per quad (64 bytes
  // and the rest) and one two-source permutation put its 64 value bytes in place of four
  // 16-byte loads and three inserts; the 16 blocks' scales (and Q4_1's minimums) are permuted
  // out of the same loads in place of a gather.
  //   Q4_1: 80-byte quads, 4-byte-aligned blocks: dword permutations (vpermt2d).
  //   Q4_0: 72-byte quads, 2-byte-aligned blocks: word permutations (vpermt2w); minimum -8 d.
  // The same arithmetic in the same order as the quad path above: bitwise the same sums.
  static void group16(const int8_t* reordered, int64_t quads, const QuantizedRows& x,
                      const std::byte* row, int64_t b0, __m512 (*acc)[2], __m512* minimum) {
    static_assert(kFormat == DType::Q4_1 || kFormat == DType::Q4_0, "Q4_1 or Q4_0 blocks");
    constexpr bool kQ40 = kFormat == DType::Q4_0;
    constexpr int64_t kBlockBytes = kQ40 ? 18 : 20, kQuadBytes = 4 * kBlockBytes;
    const std::byte* base = row + kBlockBytes * b0;
    __m512i head[4], tail[4];
    for (int q = 0; q < 4; ++q) {
      head[q] = _mm512_loadu_si512(base + kQuadBytes * q);  // bytes 0..63 of the quad
      const auto* rest = reinterpret_cast<const __m128i*>(base + kQuadBytes * q + 64);
      tail[q] = _mm512_castsi128_si512(kQ40 ? _mm_loadl_epi64(rest) : _mm_loadu_si128(rest));
    }
    __m512 dw, mw;
    __m512i value_index;
    if constexpr (kQ40) {
      // d of block 4q + k is word 9k of quad q; its values are words 9k + 1 .. 9k + 8.
      const __m512i scale_index = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                   0, 0, 0, 0, 0, 0, 0, 0,  //
                                                   59, 50, 41, 32, 27, 18, 9, 0);
      const __m512i first = _mm512_permutex2var_epi16(head[0], scale_index, head[1]);
      const __m512i second = _mm512_permutex2var_epi16(head[2], scale_index, head[3]);
      dw = _mm512_cvtph_ps(_mm256_inserti128_si256(_mm512_castsi512_si256(first),
                                                   _mm512_castsi512_si128(second), 1));
      mw = _mm512_mul_ps(dw, _mm512_set1_ps(-8.0f));
      value_index = _mm512_set_epi16(35, 34, 33, 32, 31, 30, 29, 28, 26, 25, 24, 23, 22, 21, 20, 19,
                                     17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    } else {
      // (d, m) of block 4q + k is dword 5k of quad q; its values are dwords 5k + 1 .. 5k + 4.
      const __m512i scale_index =
          _mm512_setr_epi32(0, 5, 10, 15, 16, 21, 26, 31, 0, 0, 0, 0, 0, 0, 0, 0);
      const __m512i halves = _mm512_shuffle_i64x2(
          _mm512_permutex2var_epi32(head[0], scale_index, head[1]),
          _mm512_permutex2var_epi32(head[2], scale_index, head[3]), _MM_SHUFFLE(1, 0, 1, 0));
      dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(halves));
      mw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(halves, 16)));
      value_index = _mm512_setr_epi32(1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19);
    }
    __m512 scales[kRows];
    for (int r = 0; r < kRows; ++r) {
      scales[r] = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d + r * (x.in / 32) + b0));
      minimum[r] = _mm512_fmadd_ps(mw, _mm512_loadu_ps(x.sum + r * (x.in / 32) + b0), minimum[r]);
    }
    const __m512i mask = _mm512_set1_epi8(0x0f);
    for (int q = 0; q < 4; ++q) {
      const __m512i bytes = kQ40 ? _mm512_permutex2var_epi16(head[q], value_index, tail[q])
                                 : _mm512_permutex2var_epi32(head[q], value_index, tail[q]);
      const __m512i low = _mm512_and_si512(bytes, mask);
      const __m512i high = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), mask);
      const __m512i index = _mm512_setr_epi32(
          4 * q, 4 * q, 4 * q, 4 * q, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 1, 4 * q + 2,
          4 * q + 2, 4 * q + 2, 4 * q + 2, 4 * q + 3, 4 * q + 3, 4 * q + 3, 4 * q + 3);
      for (int r = 0; r < kRows; ++r) {
        const int8_t* xq = reordered + (r * quads + b0 / 4 + q) * 128;
        const __m512i dot = _mm512_dpbusd_epi32(
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, _mm512_loadu_si512(xq)), high,
            _mm512_loadu_si512(xq + 64));
        acc[r][q & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                        _mm512_permutexvar_ps(index, scales[r]), acc[r][q & 1]);
      }
    }
  }

  static void run(const QuantizedRows& x, const WeightView& weight, const float* bias, float* y,
                  int64_t out, int64_t o_begin, int64_t o_end) {
    const int64_t blocks = x.in / 32;
    const int64_t quads = (blocks + 3) / 4;
    auto* reordered =
        static_cast<int8_t*>(thread_scratch(ScratchSlot::kPackRow, kRows * quads * 128));
    for (int r = 0; r < kRows; ++r)
      for (int64_t g = 0; g < quads; ++g) {
        const int8_t* src = x.q + r * x.in + 128 * g;
        const int n = static_cast<int>(smaller(4, blocks - 4 * g));
        const __mmask64 first = n >= 2 ? ~0ull : 0xffffffffull;
        const __mmask64 second = n >= 4 ? ~0ull : n == 3 ? 0xffffffffull : 0;
        const __m512i a = _mm512_maskz_loadu_epi8(first, src);
        const __m512i c = _mm512_maskz_loadu_epi8(second, src + 64);
        int8_t* dst = reordered + (r * quads + g) * 128;
        _mm512_storeu_si512(dst, _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_si512(dst + 64, _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(3, 1, 3, 1)));
      }
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i gather_offsets =
        kFormat == DType::Q4_1 ? _mm512_mullo_epi32(lane, _mm512_set1_epi32(20))
        : kFormat == DType::Q4_0
            ? _mm512_mullo_epi32(lane, _mm512_set1_epi32(18))
            : _mm512_mullo_epi32(_mm512_srli_epi32(lane, 2), _mm512_set1_epi32(68));
    for (int64_t o = o_begin; o < o_end; ++o) {
      const std::byte* row = static_cast<const std::byte*>(weight.data) + o * weight.row_bytes;
      __m512 acc[kRows][2], minimum[kRows];
      for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = minimum[r] = _mm512_setzero_ps();
      for (int64_t b0 = 0; b0 < blocks; b0 += 16) {
        const int n = static_cast<int>(smaller(16, blocks - b0));
        if constexpr (kFormat == DType::Q4_1 || kFormat == DType::Q4_0) {
          if (n == 16) {
            group16(reordered, quads, x, row, b0, acc, minimum);
            continue;
          }
        }
        const __mmask16 valid = static_cast<__mmask16>((1u << n) - 1u);
        const __m512i halves = _mm512_mask_i32gather_epi32(
            _mm512_setzero_si512(), valid, gather_offsets, row + scale_offset<kFormat>(b0), 1);
        const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(halves));
        __m512 scales[kRows];
        for (int r = 0; r < kRows; ++r) {
          scales[r] = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(valid, x.d + r * blocks + b0));
          // (Q4_0: the high halves are value bytes; its minimum is -8 d)
          const __m512 mw =
              kFormat == DType::Q4_0
                  ? _mm512_mul_ps(dw, _mm512_set1_ps(-8.0f))
                  : _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(halves, 16)));
          minimum[r] = _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(valid, x.sum + r * blocks + b0),
                                       minimum[r]);
        }
        int i = 0;
        for (; i + 4 <= n; i += 4) quad<true>(reordered, quads, row, b0 + i, 4, i, scales, acc);
        if (i < n) quad<false>(reordered, quads, row, b0 + i, n - i, i, scales, acc);
      }
      const float b = bias ? bias[o] : 0.0f;
      for (int r = 0; r < kRows; ++r)
        y[r * out + o] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1])) +
                         _mm512_reduce_add_ps(minimum[r]) + b;
    }
  }
};

// ---- The bf16 GEMV with vdpbf16ps ------------------------------------------------------
// Each activation row is split once per call into bf16 parts: hi = bf16(x) and, with kLow,
// lo = bf16(x - hi) (x = hi + lo to about 16 significant bits, near f32), zero-padded to whole
// registers of 32. The weights are read as stored, 32 bf16 per register (no widening), and
// each pair of inputs is multiplied with vdpbf16ps: w.hi then w.lo into one accumulator per
// output, lane l summing inputs 32j + 2l and 32j + 2l + 1 for j = 0, 1, ... in order, then
// the lanes added by S::reduce_add. As in gemv(), the order depends on `in` only, never on the
// tile: a row's result is bitwise the same alone or batched.
constexpr int kPairLanes = 32;  // bf16 per register

// Registers of 32 inputs per row: `in` rounded up.
constexpr int64_t split_blocks(int64_t in) {
  return (in + kPairLanes - 1) / kPairLanes;
}

// The bf16 values of a, b (16 each, RNE) as one register of 32 consecutive bf16.
inline __m512i to_bf16_pair(__m512 a, __m512 b) {
  const __m512bh both = _mm512_cvtne2ps_pbh(b, a);
  return reinterpret_cast<const __m512i&>(both);
}
inline __m512 bf16_low_half(__m512i v) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(v)), 16));
}
inline __m512 bf16_high_half(__m512i v) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(v, 1)), 16));
}

// The split activations, laid out so that a tile reads its rows at fixed offsets:
//   dst: [groups of kGemvRows rows][blocks][kGemvRows][parts][32] bf16, parts = 1 + kLow
// (the slots of a last group's missing rows are left unset: no tile reads them).
template <bool kLow>
void split_activations(const float* x, int64_t rows, int64_t in, uint16_t* dst) {
  constexpr int64_t kParts = kLow ? 2 : 1;
  const int64_t blocks = split_blocks(in);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * in;  // [in]
    uint16_t* base = dst + (r / kGemvRows) * blocks * kGemvRows * kParts * kPairLanes +
                     (r % kGemvRows) * kParts * kPairLanes;
    for (int64_t j = 0; j < blocks; ++j) {
      const int64_t i = j * kPairLanes;
      const int n = static_cast<int>(smaller(kPairLanes, in - i));
      const __m512 a = n >= kLanes ? S::load(row + i) : S::load_partial(row + i, n);
      const __m512 b = n >= 2 * kLanes ? S::load(row + i + kLanes)
                       : n > kLanes    ? S::load_partial(row + i + kLanes, n - kLanes)
                                       : S::zero();
      uint16_t* slot = base + j * kGemvRows * kParts * kPairLanes;  // [parts][32]
      const __m512i h = to_bf16_pair(a, b);
      _mm512_storeu_si512(slot, h);
      if constexpr (kLow) {
        const __m512i l =
            to_bf16_pair(_mm512_sub_ps(a, bf16_low_half(h)), _mm512_sub_ps(b, bf16_high_half(h)));
        _mm512_storeu_si512(slot + kPairLanes, l);
      }
    }
  }
}

// y[r, o + k] for r < kR, k < kO.   xs: the split rows of this tile's group
template <int kO, int kR, bool kLow>
void gemv_bf16_tile(const uint16_t* xs, const WeightView& weight, const float* bias, float* y,
                    int64_t in, int64_t out, int64_t o) {
  constexpr int64_t kParts = kLow ? 2 : 1;
  constexpr int64_t kBlock = kGemvRows * kParts * kPairLanes;  // bf16 per block of the group
  const uint16_t* w_rows[kO];
  for (int k = 0; k < kO; ++k)
    w_rows[k] = reinterpret_cast<const uint16_t*>(static_cast<const std::byte*>(weight.data) +
                                                  (o + k) * weight.row_bytes);  // [in]
  __m512 acc[kO][kR];
#pragma GCC unroll 4
  for (int k = 0; k < kO; ++k)
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) acc[k][r] = S::zero();
  const int64_t ahead = gemv_prefetch_offset(kO, static_cast<int64_t>(weight.row_bytes));
  const int64_t blocks = split_blocks(in);
  for (int64_t j = 0; j < blocks; ++j) {
    // The last block's weights are masked past `in` (its split activations are zero there).
    const int64_t i = j * kPairLanes;
    const __mmask32 valid = in - i >= kPairLanes
                                ? static_cast<__mmask32>(~0u)
                                : static_cast<__mmask32>((uint64_t{1} << (in - i)) - 1);
    __m512bh w[kO];
#pragma GCC unroll 4
    for (int k = 0; k < kO; ++k)
      w[k] = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(valid, w_rows[k] + i));
#pragma GCC unroll 4
    for (int k = 0; k < kO; ++k) prefetch_weight_line(w_rows[k], i * 2, ahead);
    const uint16_t* block = xs + j * kBlock;
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) {
      const __m512bh hi =
          reinterpret_cast<__m512bh>(_mm512_loadu_si512(block + r * kParts * kPairLanes));
#pragma GCC unroll 4
      for (int k = 0; k < kO; ++k) acc[k][r] = _mm512_dpbf16_ps(acc[k][r], w[k], hi);
      if constexpr (kLow) {
        const __m512bh lo = reinterpret_cast<__m512bh>(
            _mm512_loadu_si512(block + r * kParts * kPairLanes + kPairLanes));
#pragma GCC unroll 4
        for (int k = 0; k < kO; ++k) acc[k][r] = _mm512_dpbf16_ps(acc[k][r], w[k], lo);
      }
    }
  }
  // (loops unrolled fully, here and above, so that the accumulators stay in registers)
#pragma GCC unroll 4
  for (int k = 0; k < kO; ++k) {
    const float b = bias ? bias[o + k] : 0.0f;
#pragma GCC unroll 8
    for (int r = 0; r < kR; ++r) y[r * out + o + k] = S::reduce_add(acc[k][r]) + b;
  }
}

template <int kO, bool kLow, int kR = gemv_tile_max_rows(kO)>
void gemv_bf16_tile_rows(int rows, const uint16_t* xs, const WeightView& weight, const float* bias,
                         float* y, int64_t in, int64_t out, int64_t o) {
  if constexpr (kR > 1) {
    if (rows < kR)
      return gemv_bf16_tile_rows<kO, kLow, kR - 1>(rows, xs, weight, bias, y, in, out, o);
  }
  gemv_bf16_tile<kO, kR, kLow>(xs, weight, bias, y, in, out, o);
}

template <int kO, bool kLow>
void gemv_bf16_range(const uint16_t* xs, const WeightView& weight, const float* bias, float* y,
                     int64_t rows, int64_t in, int64_t out, int64_t o_begin, int64_t o_end) {
  const int64_t group = split_blocks(in) * kGemvRows * (kLow ? 2 : 1) * kPairLanes;
  int64_t o = o_begin;
  for (; o + kO <= o_end; o += kO)
    for (int64_t r = 0; r < rows; r += kGemvRows)
      gemv_bf16_tile_rows<kO, kLow>(static_cast<int>(smaller(kGemvRows, rows - r)),
                                    xs + r / kGemvRows * group, weight, bias, y + r * out, in, out,
                                    o);
  for (; o < o_end; ++o)
    for (int64_t r = 0; r < rows; r += kGemvRows)
      gemv_bf16_tile_rows<1, kLow>(static_cast<int>(smaller(kGemvRows, rows - r)),
                                   xs + r / kGemvRows * group, weight, bias, y + r * out, in, out,
                                   o);
}

// The split activations of the last gemv_bf16 on this thread (its kPackedActivations
// scratch), reused inside the same input epoch as qgemv reuses its quantized activations.
struct SplitKey {
  uint64_t epoch = 0;
  const float* x = nullptr;
  int64_t rows = 0, in = 0;
  bool low = false;
};
thread_local SplitKey split_key;

template <bool kLow>
void gemv_bf16(const float* x, const WeightView& weight, const float* bias, float* y, int64_t rows,
               int64_t in, int64_t out) {
  const int64_t groups = (rows + kGemvRows - 1) / kGemvRows;
  auto* xs = static_cast<uint16_t*>(thread_scratch(
      ScratchSlot::kPackedActivations,
      sizeof(uint16_t) * groups * split_blocks(in) * kGemvRows * (kLow ? 2 : 1) * kPairLanes));
  const uint64_t epoch = InputEpoch::current();
  if (epoch == 0 || split_key.epoch != epoch || split_key.x != x || split_key.rows != rows ||
      split_key.in != in || split_key.low != kLow) {
    split_activations<kLow>(x, rows, in, xs);
    split_key = {epoch, x, rows, in, kLow};
  }
  const int tile = gemv_tile_outputs(static_cast<int>(smaller(rows, kGemvRows)));
  auto body = [&](int64_t o_begin, int64_t o_end) {
    switch (tile) {
      case 4:
        gemv_bf16_range<4, kLow>(xs, weight, bias, y, rows, in, out, o_begin, o_end);
        break;
      case 3:
        gemv_bf16_range<3, kLow>(xs, weight, bias, y, rows, in, out, o_begin, o_end);
        break;
      case 2:
        gemv_bf16_range<2, kLow>(xs, weight, bias, y, rows, in, out, o_begin, o_end);
        break;
      default:
        gemv_bf16_range<1, kLow>(xs, weight, bias, y, rows, in, out, o_begin, o_end);
    }
  };
  gemv_output_rows(rows, in, out, weight.row_bytes, body, tile);
}
// The Q8_0 row kernel of qgemv on AVX-512 (decode): weights made unsigned (w + 128, one xor)
// for vpdpbusd against the signed activations, without the sign trick's per-row work; the
// offset is taken back out in f32 once per row, as 128 * sum_b d_w * (d_x * sum(q_x)) over
// blocks b, the activation blocks' sums kept by quantize_activation_blocks (16 blocks per
// fused multiply-add). (Integer corrections per block pair, read from memory, and two weight
// rows per pass sharing the activation loads both measured slower.) Each output's sums are
// formed in the same order whatever rows share a call (batch invariance).
template <DType kFormat, int kRows>
struct Q8Gemv512 {
  static_assert(kFormat == DType::Q8_0, "Q8_0 only");

  // Blocks b and b + 1 (b even; b + 1 only if kBoth) of one weight row, added into accumulator
  // kSlot of each activation row. i: b's place in its group of 16 (its lanes of scales).
  template <bool kBoth, int kSlot>
  __attribute__((always_inline)) static inline void pair(const QuantizedRows& x,
                                                         const std::byte* row, int64_t b, int i,
                                                         const __m512 (&scales)[kRows],
                                                         __m512 (&acc)[kRows][2]) {
    const std::byte* block = row + 34 * b + 2;
    const __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block));
    // (a missing second block: zero weights against zero activations, no correction)
    const __m256i high = kBoth ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 34))
                               : _mm256_setzero_si256();
    const __m512i w = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1),
                                       _mm512_set1_epi8(static_cast<char>(0x80)));
    const __m512i index = _mm512_add_epi32(
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), _mm512_set1_epi32(i));
    for (int r = 0; r < kRows; ++r) {
      const int8_t* xq = x.q + r * x.in + 32 * b;
      const __m512i xv =
          kBoth ? _mm512_loadu_si512(xq) : _mm512_maskz_loadu_epi8(0xffffffffull, xq);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xv);
      acc[r][kSlot] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                      _mm512_permutexvar_ps(index, scales[r]), acc[r][kSlot]);
    }
  }

  static void run(const QuantizedRows& x, const WeightView& weight, const float* bias, float* y,
                  int64_t out, int64_t o_begin, int64_t o_end) {
    const int64_t blocks = x.in / 32;
    const __m512i gather_offsets =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32(34));
    for (int64_t o = o_begin; o < o_end; ++o) {
      const std::byte* row = static_cast<const std::byte*>(weight.data) + o * weight.row_bytes;
      __m512 acc[kRows][2], offset[kRows];
      for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = offset[r] = _mm512_setzero_ps();
      for (int64_t b0 = 0; b0 < blocks; b0 += 16) {
        const int n = static_cast<int>(smaller(16, blocks - b0));
        const __mmask16 valid = static_cast<__mmask16>((1u << n) - 1u);
        const __m512i halves = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid,
                                                           gather_offsets, row + 34 * b0, 1);
        const __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(halves));
        __m512 scales[kRows];
        for (int r = 0; r < kRows; ++r) {
          scales[r] = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(valid, x.d + r * blocks + b0));
          offset[r] =
              _mm512_fmadd_ps(dw, _mm512_maskz_loadu_ps(valid, x.sum + r * blocks + b0), offset[r]);
        }
        if (n == 16) {
          for (int i = 0; i < 16; i += 4) {
            pair<true, 0>(x, row, b0 + i, i, scales, acc);
            pair<true, 1>(x, row, b0 + i + 2, i + 2, scales, acc);
          }
          continue;
        }
        for (int i = 0; i < n; i += 2) {  // the last blocks (b0 + i even: slot (i / 2) & 1)
          const bool both = i + 1 < n, odd = (i / 2) & 1;
          if (both && odd) pair<true, 1>(x, row, b0 + i, i, scales, acc);
          if (both && !odd) pair<true, 0>(x, row, b0 + i, i, scales, acc);
          if (!both && odd) pair<false, 1>(x, row, b0 + i, i, scales, acc);
          if (!both && !odd) pair<false, 0>(x, row, b0 + i, i, scales, acc);
        }
      }
      const float b = bias ? bias[o] : 0.0f;
      for (int r = 0; r < kRows; ++r)
        y[r * out + o] = S::reduce_add(_mm512_add_ps(acc[r][0], acc[r][1])) -
                         128.0f * S::reduce_add(offset[r]) + b;
    }
  }
};

void linear_bf16(const float* x, const WeightView& weight, const float* bias, float* y,
                 int64_t rows, int64_t in, int64_t out) {
  if (rows < kGemmMinRows) {
    switch (bf16_gemv()) {
      case Bf16Gemv::kSplit:
        return gemv_bf16<true>(x, weight, bias, y, rows, in, out);
      case Bf16Gemv::kRounded:
        return gemv_bf16<false>(x, weight, bias, y, rows, in, out);
      case Bf16Gemv::kWiden:
        return gemv<DType::BF16>(x, weight, bias, y, rows, in, out);
    }
  }
  gemm<Bf16Path>(x, weight, bias, y, rows, in, out);
}

// (after linear_kernels.inc) the bf16 GEMM of mixed-precision training
#include "kiln/ops/cpu/train_gemm_bf16.inc"

}  // namespace
}  // namespace kiln::ops::cpu::avx512

namespace kiln::ops::cpu {
void avx512_gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed,
                      float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate) {
  avx512::train_bf16::gemm(a, a_transposed, w, w_transposed, y, rows, depth, out, accumulate);
}
int64_t avx512_bf16_weight_words(int64_t out, int64_t depth) {
  return avx512::train_bf16::packed_weight_words(out, depth);
}
void avx512_pack_bf16_weight(const float* w, bool w_transposed, int64_t out, int64_t depth,
                             uint32_t* dst) {
  avx512::train_bf16::pack_weight(w, w_transposed, out, depth, dst);
}
void avx512_gemm_bf16_packed(const float* a, bool a_transposed, const uint32_t* w, float* y,
                             int64_t rows, int64_t depth, int64_t out, bool accumulate) {
  avx512::train_bf16::gemm_packed(a, a_transposed, w, y, rows, depth, out, accumulate);
}

const KernelTable& avx512_table() {
  static const KernelTable table{
      "avx512",
      {&avx512::gemv_or_gemm_f32<DType::F32>, &avx512::linear_bf16,
       &avx512::gemv_or_gemm_f32<DType::F16>,
       &avx512::quantized_linear<DType::Q8_0, avx512::Q8Gemv512>,
       &avx512::quantized_linear<DType::Q4_1, avx512::Qgemv512>,
       &avx512::quantized_linear<DType::Q4_1_128, avx512::Qgemv512>,
       &avx512::kquant_linear_512<DType::Q4_K>, &avx512::kquant_linear_512<DType::Q5_K>,
       &avx512::kquant_linear_512<DType::Q6_K>,
       &avx512::quantized_linear<DType::Q4_0, avx512::Qgemv512>},
      &avx512::attention,
      &avx512::silu_gated,
      &avx512::gemm_f32,
      &avx512::silu_gated_backward,
      &avx512::attention_probs,
      &avx512::attention_probs_backward,
      &avx512::adamw_update};
  return table;
}
}  // namespace kiln::ops::cpu
