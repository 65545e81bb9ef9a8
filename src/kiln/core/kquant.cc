// ggml's K-quant dequantization: the same f32 operations in the same order as ggml's
// reference C code and gguf-py (built with -ffp-contract=off: no multiply and add fused).
#include "kiln/core/kquant.h"

#include "kiln/core/dtype.h"

namespace kiln {

namespace {

// Q4_K and Q5_K: eight sub-blocks of 32 with 6-bit scales and minimums; Q5_K adds a fifth bit
// per value from qh (nullptr for Q4_K).
void dequantize_q45_k(uint16_t d16, uint16_t dmin16, const uint8_t* scales, const uint8_t* qs,
                      const uint8_t* qh, float* y) {
  const float d = f16_to_f32(d16), dmin = f16_to_f32(dmin16);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    kquant_scale_min(scales, j, sc, m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      int v = (q[l] >> shift) & 0x0F;
      if (qh) v |= ((qh[l] >> j) & 1) << 4;
      const float p = d1 * static_cast<float>(v);
      y[32 * j + l] = p - m1;
    }
  }
}

}  // namespace

void dequantize_q4_k(const BlockQ4_K& block, float* y) {
  dequantize_q45_k(block.d, block.dmin, block.scales, block.qs, nullptr, y);
}

void dequantize_q5_k(const BlockQ5_K& block, float* y) {
  dequantize_q45_k(block.d, block.dmin, block.scales, block.qs, block.qh, y);
}

void dequantize_q6_k(const BlockQ6_K& block, float* y) {
  const float d = f16_to_f32(block.d);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const int low = (block.ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
    const int high = (block.qh[32 * h + l] >> (2 * k)) & 3;
    const float ds = d * static_cast<float>(block.scales[e / 16]);
    y[e] = ds * static_cast<float>((low | (high << 4)) - 32);
  }
}

}  // namespace kiln
