// ggml's block formats, dequantized with the same f32 operations in the same order as ggml's
// reference C code and gguf-py (this file is built with -ffp-contract=off, so no multiply
// and add is fused into one rounding).
#include <cstring>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/kquant.h"
#include "kiln/io/gguf.h"

namespace kiln {
namespace {

constexpr int64_t kQK = 32;  // elements per block of the simple formats

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

// The K formats: core/kquant.h (the same arithmetic, also built with -ffp-contract=off), on
// a copy of the block (the file's blocks need not be aligned for the structs).
template <class Block, void (*kDequantize)(const Block&, float*)>
void k_block(const std::byte* b, float* y) {
  Block block;
  std::memcpy(&block, b, sizeof(Block));
  kDequantize(block, y);
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
      one = k_block<BlockQ4_K, dequantize_q4_k>;
      break;
    case GgmlType::kQ5_K:
      one = k_block<BlockQ5_K, dequantize_q5_k>;
      break;
    case GgmlType::kQ6_K:
      one = k_block<BlockQ6_K, dequantize_q6_k>;
      break;
    default:
      throw Error("ggml_dequantize: " + ggml_type_name(static_cast<uint32_t>(type)) +
                  " is not a floating or quantized type Kiln dequantizes");
  }
  for (int64_t i = 0; i < count / block; ++i) one(blocks + i * bytes, out + i * block);
}

}  // namespace kiln
