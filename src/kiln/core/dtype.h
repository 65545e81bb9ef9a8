// Element types of tensors, their names in files, and bf16/f16 <-> f32 conversion.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace kiln {

// From Q8_0 on, block-quantized weight formats (core/quant.h, docs/checkpoint_format.md):
// elements come in blocks along the last dimension, each block stored with its own scale
// (and minimum), byte for byte as ggml's Q8_0 and Q4_1 (Q4_1_128: Q4_1's scheme over 128),
// and ggml's K-quants as read from GGUF files (core/kquant.h; Kiln does not write them).
enum class DType : uint8_t {
  F32,
  BF16,
  F16,
  F64,
  I64,
  I32,
  I16,
  I8,
  U8,
  BOOL,
  Q8_0,      // int8: blocks of 32 = f16 scale + 32 int8 (34 bytes)
  Q4_1,      // int4: groups of 32 = f16 scale + f16 minimum + 16 bytes of nibbles (20 bytes)
  Q4_1_128,  // int4: groups of 128 = f16 scale + f16 minimum + 64 bytes of nibbles (68 bytes)
  // ggml's K-quants (core/kquant.h), super-blocks of 256 as llama.cpp's GGUF files store them
  Q4_K,  // 144 bytes: f16 d, f16 dmin, 8 six-bit scales and minimums, 256 nibbles
  Q5_K,  // 176 bytes: Q4_K with a fifth bit per value
  Q6_K,  // 210 bytes: 256 six-bit values, 16 int8 scales, f16 d
  // ggml's Q4_0 as read from GGUF files (Kiln does not write it): blocks of 32 = f16 scale +
  // 16 bytes of nibbles (18 bytes), x = d * (q - 8)
  Q4_0
};

// Size of one element in bytes. Throws Error for block-quantized dtypes, which have none:
// use dtype_nbytes.
size_t dtype_size(DType dtype);
// Name in manifests and safetensors headers: "F32", "BF16", ..., "Q8_0", "Q4_1", "Q4_1_128",
// "Q4_K", "Q5_K", "Q6_K", "Q4_0".
std::string_view dtype_name(DType dtype);
// Parses a dtype name; nullopt when unknown.
std::optional<DType> dtype_from_name(std::string_view name);
bool is_float(DType dtype);
// True for the block-quantized dtypes.
bool is_quantized(DType dtype);
// Elements per block (1 for plain dtypes) and bytes per block (the element size for plain
// dtypes).
int64_t dtype_block(DType dtype);
size_t dtype_block_bytes(DType dtype);
// Bytes of `count` elements. Throws Error when `count` is not a whole number of blocks.
size_t dtype_nbytes(DType dtype, int64_t count);

// bfloat16 <-> float32. f32 -> bf16 rounds to nearest even; NaN stays NaN.
inline float bf16_to_f32(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// IEEE half <-> float32. f32 -> f16 rounds to nearest even, overflows to inf, keeps
// subnormals.
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float f);

}  // namespace kiln
