// Element types of tensors, their names in files, and bf16/f16 <-> f32 conversion.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace kiln {

enum class DType : uint8_t { F32, BF16, F16, F64, I64, I32, I16, I8, U8, BOOL };

// Size of one element in bytes.
size_t dtype_size(DType dtype);
// Safetensors name: "F32", "BF16", ...
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype name; nullopt when unknown.
std::optional<DType> dtype_from_name(std::string_view name);
bool is_float(DType dtype);

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
