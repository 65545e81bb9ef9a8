// AVX-512 vector helpers (16 f32 lanes) for the kernel templates in linear_kernels.inc and
// attention_kernels.inc. Include only from a file compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512bf16 -mavx512vnni -mfma -mf16c (cpu/avx512.cc).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace kiln::ops::cpu {

struct Avx512 {
  using Vec = __m512;
  static constexpr int kLanes = 16;
  // Register tile of the f32 GEMM micro-kernel: kRows weight rows x kVecs vectors of tokens.
  static constexpr int kGemmRows = 6;
  static constexpr int kGemmVecs = 4;
  // Accumulators of a GEMV tile (weight rows x activation rows), leaving registers for the
  // weight vectors and an activation vector.
  static constexpr int kGemvAccumulators = 24;

  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec set1(float v) { return _mm512_set1_ps(v); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static __mmask16 first_lanes(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  // The first n lanes of p (n < kLanes), zeros after.
  static Vec load_partial(const float* p, int n) {
    return _mm512_maskz_loadu_ps(first_lanes(n), p);
  }
  static void store_partial(float* p, Vec v, int n) { _mm512_mask_storeu_ps(p, first_lanes(n), v); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
  static Vec sqrt(Vec a) { return _mm512_sqrt_ps(a); }
  static Vec max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  // The sum of the lanes by _mm512_reduce_add_ps's tree (halves, quarters, pairs, neighbours),
  // spelled with zero-masked shuffles (all lanes kept): GCC 12 flags the undefined sources of
  // the intrinsic's extracts as uninitialized where it inlines into some kernels.
  static float reduce_add(Vec v) {
    constexpr __mmask16 kAll = 0xffff;
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(kAll, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    v = _mm512_add_ps(v, _mm512_maskz_permute_ps(kAll, v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm512_add_ps(v, _mm512_maskz_permute_ps(kAll, v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_cvtss_f32(v);
  }
  static float reduce_max(Vec v) { return _mm512_reduce_max_ps(v); }
  // Lanes outside [begin, end) replaced by `fill`.
  static Vec keep_lanes(Vec v, int begin, int end, float fill) {
    const __mmask16 keep = static_cast<__mmask16>(first_lanes(end) & ~first_lanes(begin));
    return _mm512_mask_blend_ps(keep, _mm512_set1_ps(fill), v);
  }

  // bf16 / f16 -> f32 widening loads of kLanes (or the first n) elements.
  static Vec load_bf16(const uint16_t* p) {
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static Vec load_bf16_partial(const uint16_t* p, int n) {
    const __m256i half = _mm256_maskz_loadu_epi16(first_lanes(n), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  }
  static Vec load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static Vec load_f16_partial(const uint16_t* p, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_lanes(n), p));
  }

  // Integer tile of the int8 GEMM (quantized weights): kRows weight rows x kVecs vectors of
  // tokens. Q8_0 weights are staged as unsigned bytes w + 128 (vpdpbusd multiplies unsigned
  // by signed bytes); the accumulators start at -128 * sum(x) to take the offset back out.
  using IVec = __m512i;
  static constexpr int kQGemmRows = 6;
  static constexpr int kQGemmVecs = 2;
  static constexpr bool kOffsetQ8 = true;
  static IVec izero() { return _mm512_setzero_si512(); }
  static IVec iload(const void* p) { return _mm512_loadu_si512(p); }
  static IVec iset1(int32_t v) { return _mm512_set1_epi32(v); }
  static Vec to_float(IVec v) { return _mm512_cvtepi32_ps(v); }
  static Vec as_float(IVec v) { return _mm512_castsi512_ps(v); }
  // acc + per int32 lane the sum of 4 products of unsigned u and signed x bytes.
  static IVec dot_accumulate(IVec acc, IVec u, IVec x) { return _mm512_dpbusd_epi32(acc, u, x); }
  // x with the sign of w (0 where w is 0), and |w| (signed-by-signed dot products).
  static IVec sign_i8(IVec x, IVec w) {
    const __mmask64 negative = _mm512_movepi8_mask(w);
    const IVec flipped = _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x);
    return _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(w, w), flipped);
  }
  static IVec abs_i8(IVec w) { return _mm512_abs_epi8(w); }

  // 8 int32 lanes, each the sum of 4 products of unsigned u and signed x bytes (vpdpbusd).
  static __m256i dot_u8_i8(__m256i u, __m256i x) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x);
  }
  // The same for signed w and x bytes: |w| times x with w's sign.
  static __m256i dot_i8(__m256i w, __m256i x) {
    return dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  }

  // e^x to about 2 ulp for x in [-87, 88]; 0 below (and for -inf).
  static Vec exp(Vec x) {
    const Vec clamped = _mm512_max_ps(_mm512_min_ps(x, set1(88.0f)), set1(-87.0f));
    const Vec n = _mm512_roundscale_ps(_mm512_mul_ps(clamped, set1(1.44269504088896341f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Vec r = _mm512_fnmadd_ps(n, set1(0.693359375f), clamped);
    r = _mm512_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    Vec p = set1(1.9875691500e-4f);
    p = fmadd(p, r, set1(1.3981999507e-3f));
    p = fmadd(p, r, set1(8.3334519073e-3f));
    p = fmadd(p, r, set1(4.1665795894e-2f));
    p = fmadd(p, r, set1(1.6666665459e-1f));
    p = fmadd(p, r, set1(5.0000001201e-1f));
    p = fmadd(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, set1(1.0f)));
    const Vec result = _mm512_scalef_ps(p, n);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, set1(-87.0f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(underflow, result, zero());
  }
};

}  // namespace kiln::ops::cpu
