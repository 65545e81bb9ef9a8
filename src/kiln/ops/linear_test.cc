#include "kiln/ops/linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kiln/core/error.h"

namespace kiln::ops {
namespace {

TEST(Linear, MatchesDoublePrecisionForEveryWeightDtype) {
  const int64_t rows = 3, in = 37, out = 11;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(rows * in), w(out * in), bias(out);  // [rows, in], [out, in], [out]
  for (float& v : x) v = normal(rng);
  for (float& v : bias) v = normal(rng);
  // Weights exactly representable in bf16 and f16, so every dtype computes the same thing.
  for (float& v : w) v = bf16_to_f32(f32_to_bf16(std::round(normal(rng) * 64.0f) / 64.0f));
  std::vector<uint16_t> w_bf16(w.size()), w_f16(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w_bf16[i] = f32_to_bf16(w[i]);
    w_f16[i] = f32_to_f16(w[i]);
  }
  std::vector<double> expected(rows * out);  // [rows, out]
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double sum = bias[o];
      for (int64_t i = 0; i < in; ++i) sum += static_cast<double>(x[n * in + i]) * w[o * in + i];
      expected[n * out + o] = sum;
    }
  const std::pair<DType, const void*> variants[] = {
      {DType::F32, w.data()}, {DType::BF16, w_bf16.data()}, {DType::F16, w_f16.data()}};
  for (const auto& [dtype, weight] : variants) {
    std::vector<float> y(rows * out);  // [rows, out]
    linear(x.data(), weight, dtype, bias.data(), y.data(), rows, in, out);
    double worst = 0.0;
    for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(y[i] - expected[i]));
    std::cout << dtype_name(dtype) << " max abs err = " << worst << std::endl;
    EXPECT_LE(worst, 1e-4) << dtype_name(dtype);
  }
}

TEST(Linear, WithoutBiasAndRejectsIntegerWeights) {
  const std::vector<float> x = {1, 2};         // [1, 2]
  const std::vector<float> w = {1, 0, 3, -1};  // [2, 2]
  std::vector<float> y(2);                     // [1, 2]
  linear(x.data(), w.data(), DType::F32, nullptr, y.data(), 1, 2, 2);
  EXPECT_EQ(y, (std::vector<float>{1, 1}));
  const std::vector<int32_t> iw(4);
  EXPECT_THROW(linear(x.data(), iw.data(), DType::I32, nullptr, y.data(), 1, 2, 2), Error);
}

}  // namespace
}  // namespace kiln::ops
