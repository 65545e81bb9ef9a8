// ggml's K-quant weight formats (DType::Q4_K, Q5_K, Q6_K), as llama.cpp's GGUF files store
// them: super-blocks of 256 values along a row, each with an f16 super-scale and a small
// integer scale per 32 (Q4_K, Q5_K) or per 16 (Q6_K) values. Kiln reads them in place from a
// mapped GGUF file (io/gguf_direct.h) and runs them on its quantized kernels (ops/linear.h);
// it does not quantize into them.
//
//   Q4_K  144 bytes: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
//         sub-block j < 8 (values 32j .. 32j + 31): 6-bit scale sc_j and minimum m_j packed in
//         scales[] (kquant_scales_mins), levels q in the low (even j) or high (odd j) nibbles
//         of qs[32 (j / 2) + l]; value (d * sc_j) * q - (dmin * m_j)
//   Q5_K  176 bytes: Q4_K's fields with u8 qh[32] between scales and qs: bit j of qh[l] is the
//         fifth bit of value 32j + l
//   Q6_K  210 bytes: u8 ql[128], u8 qh[64], int8 scales[16], f16 d
//         value e = 128h + 32k + l (h < 2, k < 4, l < 32): low nibble of ql[64h + 32 (k % 2) + l]
//         (high nibble for k >= 2), high bits 2k, 2k + 1 of qh[32h + l]; value
//         (d * scales[e / 16]) * (q - 32)
//
// Dequantization is ggml's f32 arithmetic in ggml's order with no fused multiply-add
// (kquant.cc is built with -ffp-contract=off): the values equal llama.cpp's bit for bit.
#pragma once

#include <cstdint>

namespace kiln {

struct BlockQ4_K {
  uint16_t d;          // f16 super-scale of the scales
  uint16_t dmin;       // f16 super-scale of the minimums
  uint8_t scales[12];  // 8 six-bit scales and 8 six-bit minimums
  uint8_t qs[128];     // 256 nibbles
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];   // fifth bits
  uint8_t qs[128];  // low four bits
};
struct BlockQ6_K {
  uint8_t ql[128];    // low four bits
  uint8_t qh[64];     // high two bits
  int8_t scales[16];  // one per 16 values
  uint16_t d;         // f16 super-scale
};
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210,
              "K-quant blocks must be packed as ggml's");

// The 6-bit scale and minimum of sub-block j (0..7) of a Q4_K / Q5_K super-block: j < 4 in
// the low 6 bits of scales[j] and scales[j + 4]; j >= 4 in the nibbles of scales[j + 4] with
// their top two bits in the high bits of scales[j - 4] and scales[j].
inline void kquant_scale_min(const uint8_t* scales, int j, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = scales[j] & 63;
    min = scales[j + 4] & 63;
  } else {
    scale = static_cast<uint8_t>((scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4));
    min = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// One super-block of 256 values as f32, exactly as ggml dequantizes it.
void dequantize_q4_k(const BlockQ4_K& block, float* y);
void dequantize_q5_k(const BlockQ5_K& block, float* y);
void dequantize_q6_k(const BlockQ6_K& block, float* y);

}  // namespace kiln
