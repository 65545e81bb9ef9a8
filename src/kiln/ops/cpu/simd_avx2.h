// AVX2 + FMA + F16C vector helpers (8 f32 lanes) for the kernel templates in
// linear_kernels.inc and attention_kernels.inc. Include only from a file compiled with
// -mavx2 -mfma -mf16c (cpu/avx2.cc).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace kiln::ops::cpu {

struct Avx2 {
  using Vec = __m256;
  static constexpr int kLanes = 8;
  // Register tile of the f32 GEMM micro-kernel: kRows weight rows x kVecs vectors of tokens.
  static constexpr int kGemmRows = 4;
  static constexpr int kGemmVecs = 3;
  // Accumulators of a GEMV tile (weight rows x activation rows), leaving registers for the
  // weight vectors and an activation vector.
  static constexpr int kGemvAccumulators = 12;

  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec set1(float v) { return _mm256_set1_ps(v); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  // Lane i is all ones when begin <= i < end.
  static __m256i lane_mask(int begin, int end) {
    const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i at_least = _mm256_cmpgt_epi32(index, _mm256_set1_epi32(begin - 1));
    const __m256i below = _mm256_cmpgt_epi32(_mm256_set1_epi32(end), index);
    return _mm256_and_si256(at_least, below);
  }
  // The first n lanes of p (n < kLanes), zeros after.
  static Vec load_partial(const float* p, int n) { return _mm256_maskload_ps(p, lane_mask(0, n)); }
  static void store_partial(float* p, Vec v, int n) { _mm256_maskstore_ps(p, lane_mask(0, n), v); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static Vec div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
  static Vec sqrt(Vec a) { return _mm256_sqrt_ps(a); }
  static Vec max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
  static float reduce_add(Vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float reduce_max(Vec v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // Lanes outside [begin, end) replaced by `fill`.
  static Vec keep_lanes(Vec v, int begin, int end, float fill) {
    return _mm256_blendv_ps(set1(fill), v, _mm256_castsi256_ps(lane_mask(begin, end)));
  }

  // bf16 / f16 -> f32 widening loads of kLanes (or the first n) elements.
  static Vec load_bf16(const uint16_t* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static Vec load_bf16_partial(const uint16_t* p, int n) {
    uint16_t buffer[kLanes] = {};
    std::memcpy(buffer, p, sizeof(uint16_t) * n);
    return load_bf16(buffer);
  }
  static Vec load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static Vec load_f16_partial(const uint16_t* p, int n) {
    uint16_t buffer[kLanes] = {};
    std::memcpy(buffer, p, sizeof(uint16_t) * n);
    return load_f16(buffer);
  }

  // Integer tile of the int8 GEMM (quantized weights): kRows weight rows x kVecs vectors of
  // tokens. vpmaddubsw saturates at 16 bits, so Q8_0 weights stay signed and their signs move
  // onto the activations (|w| <= 127 keeps every pair sum in range).
  using IVec = __m256i;
  static constexpr int kQGemmRows = 3;
  static constexpr int kQGemmVecs = 2;
  static constexpr bool kOffsetQ8 = false;
  static IVec izero() { return _mm256_setzero_si256(); }
  static IVec iload(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static IVec iset1(int32_t v) { return _mm256_set1_epi32(v); }
  static Vec to_float(IVec v) { return _mm256_cvtepi32_ps(v); }
  static Vec as_float(IVec v) { return _mm256_castsi256_ps(v); }
  static IVec dot_accumulate(IVec acc, IVec u, IVec x) {
    return _mm256_add_epi32(acc,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
  }
  static IVec sign_i8(IVec x, IVec w) { return _mm256_sign_epi8(x, w); }
  static IVec abs_i8(IVec w) { return _mm256_abs_epi8(w); }

  // 8 int32 lanes, each the sum of 4 products of unsigned u and signed x bytes (no overflow
  // for |x| <= 127 and u <= 128).
  static __m256i dot_u8_i8(__m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
  }
  // The same for signed w and x bytes: |w| times x with w's sign.
  static __m256i dot_i8(__m256i w, __m256i x) {
    return dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  }

  // e^x to about 2 ulp for x in [-87, 88]; 0 below (and for -inf).
  static Vec exp(Vec x) {
    const Vec clamped = _mm256_max_ps(_mm256_min_ps(x, set1(88.0f)), set1(-87.0f));
    const Vec n = _mm256_round_ps(_mm256_mul_ps(clamped, set1(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    Vec r = _mm256_fnmadd_ps(n, set1(0.693359375f), clamped);
    r = _mm256_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    Vec p = set1(1.9875691500e-4f);
    p = fmadd(p, r, set1(1.3981999507e-3f));
    p = fmadd(p, r, set1(8.3334519073e-3f));
    p = fmadd(p, r, set1(4.1665795894e-2f));
    p = fmadd(p, r, set1(1.6666665459e-1f));
    p = fmadd(p, r, set1(5.0000001201e-1f));
    p = fmadd(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, set1(1.0f)));
    // 2^n built in the exponent field (n in [-126, 127] after the clamp).
    const __m256i exponent =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const Vec result = _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
    return _mm256_blendv_ps(result, zero(), _mm256_cmp_ps(x, set1(-87.0f), _CMP_LT_OQ));
  }
};

}  // namespace kiln::ops::cpu
