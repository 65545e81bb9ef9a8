// The block-quantized weight formats (DType::Q8_0, Q4_1, Q4_1_128): their block layouts and
// the plain reference quantization and dequantization of rows, as ggml's type traits give
// them. The layouts are byte-compatible with ggml's Q8_0 and Q4_1 (docs/checkpoint_format.md):
//
//   Q8_0      34 bytes per 32 elements:  f16 d, int8 q[32];            x[i] = d * q[i]
//   Q4_1      20 bytes per 32 elements:  f16 d, f16 m, uint8 qs[16];   x[i] = d * q[i] + m
//             q[j] = qs[j] & 15 and q[j + 16] = qs[j] >> 4 for j < 16
//   Q4_1_128  68 bytes per 128 elements: f16 d, f16 m, uint8 qs[64]: four Q4_1 nibble sets,
//             sub-block s (elements 32s .. 32s + 31) in qs[16s .. 16s + 15] as in Q4_1
//   Q4_0      18 bytes per 32 elements:  f16 d, uint8 qs[16];          x[i] = d * (q[i] - 8)
//             nibbles as in Q4_1; ggml's block as read from GGUF files (Kiln does not write
//             it; 18-byte blocks are not 4-byte aligned: read them with memcpy)
//
// All little-endian; d and m are IEEE half precision.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.h"

namespace kiln {

struct BlockQ8_0 {
  uint16_t d;    // f16 scale
  int8_t q[32];  // values
};
struct BlockQ4_1 {
  uint16_t d;      // f16 scale
  uint16_t m;      // f16 minimum
  uint8_t qs[16];  // nibbles: low = element j, high = element j + 16
};
struct BlockQ4_1_128 {
  uint16_t d;      // f16 scale
  uint16_t m;      // f16 minimum
  uint8_t qs[64];  // four 16-byte Q4_1 nibble sets, one per 32 elements
};
struct BlockQ4_0 {
  uint16_t d;      // f16 scale
  uint8_t qs[16];  // nibbles as in Q4_1: value d * (q - 8)
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 blocks must be packed as ggml's");
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ4_1_128) == 68,
              "quantized blocks must be packed as ggml's");

// Quantizes `count` f32 values (a whole number of blocks of `dtype`) into `dst`: Q8_0 from
// d = max|x| / 127 and q = round(x / d); Q4_1 from m = min(x), d = (max(x) - m) / 15 and
// q = round((x - m) / d) clamped to [0, 15]; then a few rounds of the least-squares scale
// (and minimum) for those levels and requantizing, keeping the smallest squared error (d and
// m rounded to f16 before use, so the stored values are the ones dequantization uses).
// Throws Error for other dtypes (also Q4_0 and the K-quants, which Kiln only reads) or partial
// blocks.
void quantize_row(DType dtype, const float* x, void* dst, int64_t count);
// The inverse: `count` values of `dtype` blocks as f32 (also Q4_0 and the K-quants,
// core/kquant.h: exactly ggml's values).
void dequantize_row(DType dtype, const void* src, float* y, int64_t count);

// Activations quantized per block of 32 to int8 as the quantized kernels use them
// (ggml's Q8 activations): d = max|x| / 127 in f32, q = x * (1 / d) rounded to nearest even,
// and for each block the sum of its q times d. `count` is a multiple of 32.
void quantize_activations(const float* x, int64_t count, int8_t* q, float* d, float* sum);
// The values those activations stand for: x[i] replaced by d * q[i] (for tests: a fast
// kernel on int8 activations matches the reference kernel on these to rounding).
void round_activations(float* x, int64_t count);

}  // namespace kiln
