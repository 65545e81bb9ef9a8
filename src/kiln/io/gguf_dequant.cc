// ggml's block formats, dequantized with the same f32 operations in the same order as ggml's
// reference C code and gguf-py (this file is built with -ffp-contract=off, so no multiply
// and add is fused into one rounding).
#include <cstring>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/io/gguf.h"

namespace kiln {
namespace {

constexpr int64_t kQK = 32;    // elements per block of the simple formats
constexpr int64_t kQKK = 256;  // elements per super-block of the K formats

float half(const std::byte* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return f16_to_f32(bits);
}

uint8_t byte(const std::byte* p, int64_t i) {
  return static_cast<uint8_t>(p[i]);
}

// Q4_0: f16 d, 16 bytes of nibbles; element j is the low nibble of byte j (j < 16), else the
// high nibble of byte j - 16; value d * (q - 8).
void q4_0(const std::byte* b, float* y) {
  const float d = half(b);
  const std::byte* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * static_cast<float>((byte(qs, j) & 0x0F) - 8);
    y[j + kQK / 2] = d * static_cast<float>((byte(qs, j) >> 4) - 8);
  }
}

// Q4_1: f16 d, f16 m, nibbles as Q4_0; value d * q + m.
void q4_1(const std::byte* b, float* y) {
  const float d = half(b), m = half(b + 2);
  const std::byte* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    const float lo = d * static_cast<float>(byte(qs, j) & 0x0F);
    const float hi = d * static_cast<float>(byte(qs, j) >> 4);
    y[j] = lo + m;
    y[j + kQK / 2] = hi + m;
  }
}

// Q5_0: f16 d, 32 high bits (u32, bit j for element j), nibbles as Q4_0; value d * (q - 16).
void q5_0(const std::byte* b, float* y) {
  const float d = half(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const std::byte* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (byte(qs, j) & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (byte(qs, j) >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + kQK / 2] = d * static_cast<float>(hi - 16);
  }
}

// Q5_1: f16 d, f16 m, high bits and nibbles as Q5_0; value d * q + m.
void q5_1(const std::byte* b, float* y) {
  const float d = half(b), m = half(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const std::byte* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (byte(qs, j) & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (byte(qs, j) >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    const float a = d * static_cast<float>(lo);
    const float c = d * static_cast<float>(hi);
    y[j] = a + m;
    y[j + kQK / 2] = c + m;
  }
}

// Q8_0: f16 d, 32 int8; value q * d.
void q8_0(const std::byte* b, float* y) {
  const float d = half(b);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<int8_t>(byte(b + 2, j))) * d;
}

// The 6-bit scale and minimum of sub-block j (0..7) of a Q4_K / Q5_K super-block, packed in
// 12 bytes: j < 4 in the low 6 bits of bytes j and j + 4; j >= 4 in the nibbles of byte
// j + 4 with their top 2 bits in the high bits of bytes j - 4 and j.
void scale_min_k4(int j, const std::byte* s, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = byte(s, j) & 63;
    min = byte(s, j + 4) & 63;
  } else {
    scale = static_cast<uint8_t>((byte(s, j + 4) & 0x0F) | ((byte(s, j - 4) >> 6) << 4));
    min = static_cast<uint8_t>((byte(s, j + 4) >> 4) | ((byte(s, j) >> 6) << 4));
  }
}

// Q4_K: f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles; 8 sub-blocks of 32, sub-block
// j in the low (even j) or high (odd j) nibbles of bytes 32 (j / 2) ...; value
// (d * scale) * q - (dmin * min).
void q4_k(const std::byte* b, float* y) {
  const float d = half(b), dmin = half(b + 2);
  const std::byte* scales = b + 4;
  const std::byte* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    scale_min_k4(j, scales, sc, m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    const std::byte* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const float p = d1 * static_cast<float>((byte(q, l) >> shift) & 0x0F);
      y[32 * j + l] = p - m1;
    }
  }
}

// Q5_K: Q4_K's layout with 32 bytes of fifth bits (bit j of byte l for sub-block j, element
// l) between the scales and the nibbles.
void q5_k(const std::byte* b, float* y) {
  const float d = half(b), dmin = half(b + 2);
  const std::byte* scales = b + 4;
  const std::byte* qh = b + 16;
  const std::byte* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    scale_min_k4(j, scales, sc, m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    const std::byte* q = qs + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((byte(q, l) >> shift) & 0x0F) | (((byte(qh, l) >> j) & 1) << 4);
      const float p = d1 * static_cast<float>(v);
      y[32 * j + l] = p - m1;
    }
  }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales, f16 d. Element
// e = 128 h + 32 k + l (h < 2, k < 4, l < 32): low nibble of byte 64 h + 32 (k % 2) + l
// (high nibble when k >= 2), high bits 2k..2k+1 of byte 32 h + l; value (d * scale[e / 16]) *
// (q - 32).
void q6_k(const std::byte* b, float* y) {
  const std::byte* ql = b;
  const std::byte* qh = b + 128;
  const std::byte* sc = b + 192;
  const float d = half(b + 208);
  for (int e = 0; e < kQKK; ++e) {
    const int h = e / 128, k = (e % 128) / 32, l = e % 32;
    const int low = (byte(ql, 64 * h + 32 * (k % 2) + l) >> (4 * (k / 2))) & 0x0F;
    const int high = (byte(qh, 32 * h + l) >> (2 * k)) & 3;
    const float ds = d * static_cast<float>(static_cast<int8_t>(byte(sc, e / 16)));
    y[e] = ds * static_cast<float>((low | (high << 4)) - 32);
  }
}

}  // namespace

void ggml_dequantize(GgmlType type, const std::byte* blocks, int64_t count, float* out) {
  const int64_t block = ggml_block_size(type);
  const int64_t bytes = ggml_type_size(type);
  check(count % block == 0, "ggml_dequantize: " + std::to_string(count) +
                                " elements are not a whole number of " +
                                ggml_type_name(static_cast<uint32_t>(type)) + " blocks");
  void (*one)(const std::byte*, float*) = nullptr;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(out, blocks, static_cast<size_t>(count) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < count; ++i) out[i] = half(blocks + 2 * i);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < count; ++i) {
        uint16_t bits;
        std::memcpy(&bits, blocks + 2 * i, 2);
        out[i] = bf16_to_f32(bits);
      }
      return;
    case GgmlType::kQ4_0:
      one = q4_0;
      break;
    case GgmlType::kQ4_1:
      one = q4_1;
      break;
    case GgmlType::kQ5_0:
      one = q5_0;
      break;
    case GgmlType::kQ5_1:
      one = q5_1;
      break;
    case GgmlType::kQ8_0:
      one = q8_0;
      break;
    case GgmlType::kQ4_K:
      one = q4_k;
      break;
    case GgmlType::kQ5_K:
      one = q5_k;
      break;
    case GgmlType::kQ6_K:
      one = q6_k;
      break;
    default:
      throw Error("ggml_dequantize: " + ggml_type_name(static_cast<uint32_t>(type)) +
                  " is not a floating or quantized type Kiln dequantizes");
  }
  for (int64_t i = 0; i < count / block; ++i) one(blocks + i * bytes, out + i * block);
}

}  // namespace kiln
