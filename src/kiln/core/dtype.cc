#include "kiln/core/dtype.h"

#include <array>
#include <string>
#include <utility>

#include "kiln/core/error.h"

namespace kiln {
namespace {
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;        // bytes per block
  int64_t block = 1;  // elements per block
};
constexpr std::array<DTypeInfo, 17> kInfos = {{
    {DType::F32, "F32", 4},
    {DType::BF16, "BF16", 2},
    {DType::F16, "F16", 2},
    {DType::F64, "F64", 8},
    {DType::I64, "I64", 8},
    {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
    {DType::Q8_0, "Q8_0", 34, 32},
    {DType::Q4_1, "Q4_1", 20, 32},
    {DType::Q4_1_128, "Q4_1_128", 68, 128},
    {DType::Q4_K, "Q4_K", 144, 256},
    {DType::Q5_K, "Q5_K", 176, 256},
    {DType::Q6_K, "Q6_K", 210, 256},
    {DType::Q4_0, "Q4_0", 18, 32},
}};
}  // namespace

size_t dtype_size(DType dtype) {
  const DTypeInfo& info = kInfos[static_cast<size_t>(dtype)];
  if (info.block != 1)
    throw Error("dtype " + std::string(info.name) +
                " is block-quantized: it has no size per element");
  return info.size;
}
bool is_quantized(DType dtype) {
  return kInfos[static_cast<size_t>(dtype)].block != 1;
}
int64_t dtype_block(DType dtype) {
  return kInfos[static_cast<size_t>(dtype)].block;
}
size_t dtype_block_bytes(DType dtype) {
  return kInfos[static_cast<size_t>(dtype)].size;
}
size_t dtype_nbytes(DType dtype, int64_t count) {
  const DTypeInfo& info = kInfos[static_cast<size_t>(dtype)];
  if (count % info.block != 0)
    throw Error(std::to_string(count) + " elements are not whole blocks of " +
                std::string(info.name) + " (blocks of " + std::to_string(info.block) + ")");
  return static_cast<size_t>(count / info.block) * info.size;
}
std::string_view dtype_name(DType dtype) {
  return kInfos[static_cast<size_t>(dtype)].name;
}
std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& info : kInfos)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}
bool is_float(DType dtype) {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F64;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exponent = 127 - 15 + 1;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      mantissa &= 0x3ffu;
      bits = sign | (exponent << 23) | (mantissa << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x47800000u) {                                             // >= 65536: overflow
    // Values that round below 65520 were handled above this threshold's range; anything
    // here is inf after rounding.
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to 0
    uint32_t exponent = abs >> 23;
    uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exponent;  // 113 - exponent + 13
    uint32_t half = mantissa >> shift;
    uint32_t remainder = mantissa & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  // Normal: rebias the exponent and round the mantissa to 10 bits, nearest even.
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  uint32_t result = ((rounded >> 13) - ((127 - 15) << 10));
  if (result >= 0x7c00u) result = 0x7c00u;
  return static_cast<uint16_t>(sign | result);
}

}  // namespace kiln
