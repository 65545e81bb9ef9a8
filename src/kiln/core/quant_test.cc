// The quantized block formats: exact byte layouts (ggml's Q8_0 and Q4_1), round-trip error
// bounds, and quantized tensors' views, copies and conversions.
#include "kiln/core/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/tensor.h"

namespace kiln {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(Quant, BlockSizesAndNames) {
  EXPECT_EQ(dtype_block(DType::Q8_0), 32);
  EXPECT_EQ(dtype_block_bytes(DType::Q8_0), 34u);
  EXPECT_EQ(dtype_block(DType::Q4_1), 32);
  EXPECT_EQ(dtype_block_bytes(DType::Q4_1), 20u);
  EXPECT_EQ(dtype_block(DType::Q4_1_128), 128);
  EXPECT_EQ(dtype_block_bytes(DType::Q4_1_128), 68u);
  EXPECT_EQ(dtype_nbytes(DType::Q8_0, 64), 68u);
  EXPECT_EQ(dtype_nbytes(DType::F32, 3), 12u);
  EXPECT_THROW(dtype_nbytes(DType::Q4_1, 40), Error);
  EXPECT_THROW(dtype_size(DType::Q8_0), Error);
  EXPECT_EQ(dtype_from_name("Q4_1_128"), DType::Q4_1_128);
  EXPECT_TRUE(is_quantized(DType::Q4_1));
  EXPECT_FALSE(is_quantized(DType::BF16));
}

// Bytes written by hand as ggml lays them out decode to the documented values.
TEST(Quant, Q8_0LayoutIsGgmls) {
  std::vector<uint8_t> block(34);
  const uint16_t d = f32_to_f16(0.5f);
  std::memcpy(block.data(), &d, 2);  // little-endian f16 scale first
  for (int i = 0; i < 32; ++i)
    block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(8 * i - 127));
  std::vector<float> y(32);
  dequantize_row(DType::Q8_0, block.data(), y.data(), 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.5f * static_cast<float>(8 * i - 127)) << i;
  // And quantizing those values (max |y| = 127 d) gives the same bytes back.
  std::vector<uint8_t> again(34);
  quantize_row(DType::Q8_0, y.data(), again.data(), 32);
  EXPECT_EQ(again, block);
}

TEST(Quant, Q4_1LayoutIsGgmls) {
  std::vector<uint8_t> block(20);
  const uint16_t d = f32_to_f16(0.25f), m = f32_to_f16(-1.0f);
  std::memcpy(block.data(), &d, 2);
  std::memcpy(block.data() + 2, &m, 2);
  // Byte j: element j in the low nibble, element j + 16 in the high nibble.
  for (int j = 0; j < 16; ++j) block[4 + j] = static_cast<uint8_t>((j & 15) | ((15 - j) << 4));
  std::vector<float> y(32);
  dequantize_row(DType::Q4_1, block.data(), y.data(), 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.25f * static_cast<float>(j) - 1.0f) << j;
    EXPECT_EQ(y[j + 16], 0.25f * static_cast<float>(15 - j) - 1.0f) << j + 16;
  }
  // The 128-group variant: one d and m, then four such nibble sets.
  std::vector<uint8_t> group(68);
  std::memcpy(group.data(), &d, 2);
  std::memcpy(group.data() + 2, &m, 2);
  for (int s = 0; s < 4; ++s)
    for (int j = 0; j < 16; ++j) group[4 + 16 * s + j] = static_cast<uint8_t>(s | (j << 4));
  std::vector<float> z(128);
  dequantize_row(DType::Q4_1_128, group.data(), z.data(), 128);
  for (int s = 0; s < 4; ++s)
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(z[32 * s + j], 0.25f * static_cast<float>(s) - 1.0f);
      EXPECT_EQ(z[32 * s + j + 16], 0.25f * static_cast<float>(j) - 1.0f);
    }
}

// Round trips stay near half a quantization step of the min/max scale (the least-squares
// refinement may shrink the range and clip an extreme value a little).
TEST(Quant, RoundTripErrorIsWithinHalfAStep) {
  const int64_t n = 128 * 40;
  const std::vector<float> x = random_values(n, 3);
  for (const DType dtype : {DType::Q8_0, DType::Q4_1, DType::Q4_1_128}) {
    const int64_t block = dtype_block(dtype);
    std::vector<uint8_t> stored(dtype_nbytes(dtype, n));
    quantize_row(dtype, x.data(), stored.data(), n);
    std::vector<float> y(n);
    dequantize_row(dtype, stored.data(), y.data(), n);
    double worst = 0.0;  // in steps
    for (int64_t b = 0; b < n / block; ++b) {
      float lo = x[b * block], hi = lo, amax = 0.0f;
      for (int64_t i = b * block; i < (b + 1) * block; ++i) {
        lo = std::fmin(lo, x[i]);
        hi = std::fmax(hi, x[i]);
        amax = std::fmax(amax, std::fabs(x[i]));
      }
      const float step = dtype == DType::Q8_0 ? amax / 127.0f : (hi - lo) / 15.0f;
      for (int64_t i = b * block; i < (b + 1) * block; ++i)
        worst = std::fmax(worst, std::fabs(y[i] - x[i]) / step);
    }
    std::cout << dtype_name(dtype) << ": worst round-trip error " << worst << " steps" << std::endl;
    EXPECT_LT(worst, 0.75) << dtype_name(dtype);
  }
}

TEST(Quant, ActivationsRoundToTheirBlocks) {
  std::vector<float> x = random_values(64, 5);
  std::vector<int8_t> q(64);
  float d[2], sum[2];
  quantize_activations(x.data(), 64, q.data(), d, sum);
  std::vector<float> rounded = x;
  round_activations(rounded.data(), 64);
  for (int b = 0; b < 2; ++b) {
    int total = 0;
    for (int i = 0; i < 32; ++i) {
      EXPECT_EQ(rounded[32 * b + i], d[b] * q[32 * b + i]);
      EXPECT_LE(std::fabs(rounded[32 * b + i] - x[32 * b + i]), 0.5f * d[b] * 1.0001f);
      total += q[32 * b + i];
    }
    EXPECT_FLOAT_EQ(sum[b], d[b] * static_cast<float>(total));
  }
}

TEST(Quant, TensorsOfBlocksSliceCopyAndConvert) {
  const std::vector<float> values = random_values(4 * 3 * 64, 7);
  const Tensor f32 = Tensor::from_f32({4, 3, 64}, values);
  for (const DType dtype : {DType::Q8_0, DType::Q4_1}) {
    const Tensor q = f32.to(dtype);
    EXPECT_EQ(q.nbytes(), dtype_nbytes(dtype, 4 * 3 * 64));
    const Tensor back = q.to(DType::F32);
    // A strided view (as a scanned checkpoint's layer) copies whole blocks.
    const Tensor layer = q.select(1, 2);  // [4, 64]
    EXPECT_FALSE(layer.is_contiguous());
    const Tensor copied = layer.contiguous().to(DType::F32);
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t i = 0; i < 64; ++i)
        EXPECT_EQ(copied.data<float>()[r * 64 + i], back.data<float>()[(r * 3 + 2) * 64 + i]);
    EXPECT_EQ(q.item_as_double(5 * 64 + 33), back.data<float>()[5 * 64 + 33]);
    // Block-aligned slices of the last dimension are views; others are refused.
    EXPECT_EQ(q.slice(2, 32, 64).to(DType::F32).item_as_double(0), back.data<float>()[32]);
    EXPECT_THROW(q.slice(2, 16, 48), Error);
    EXPECT_THROW(q.transpose(1, 2), Error);
  }
  EXPECT_THROW(Tensor::zeros(DType::Q8_0, {2, 33}), Error);
  EXPECT_THROW(Tensor::zeros(DType::Q4_1_128, {2, 64}), Error);
}

}  // namespace
}  // namespace kiln
