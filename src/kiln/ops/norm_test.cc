#include "kiln/ops/norm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace kiln::ops {
namespace {

TEST(RmsNorm, ScalesByRootMeanSquareAndWeight) {
  const std::vector<float> x = {3, 4, 0, 0, 1, 1, 1, 1};  // [2, 4]
  const std::vector<float> w = {1, 2, 0.5f, 0};           // [4]
  std::vector<float> y(8);
  rms_norm(x.data(), w.data(), y.data(), 2, 4, 0.0f, false);
  const float inv = 1.0f / 2.5f;  // sqrt((9 + 16) / 4) = 2.5
  EXPECT_FLOAT_EQ(y[0], 3 * inv);
  EXPECT_FLOAT_EQ(y[1], 4 * inv * 2);
  EXPECT_FLOAT_EQ(y[4], 1.0f);
  EXPECT_FLOAT_EQ(y[7], 0.0f);
  rms_norm(x.data(), w.data(), y.data(), 2, 4, 0.0f, true);  // (1 + w)
  EXPECT_FLOAT_EQ(y[1], 4 * inv * 3);
  EXPECT_FLOAT_EQ(y[7], 1.0f);
}

// Without weights (Llama 4's L2 QK norm): x / sqrt(mean(x^2) + eps).
TEST(RmsNorm, WithoutWeightsDividesByRootMeanSquareOnly) {
  const std::vector<float> x = {3, 4, 0, 0, -1, 1, -1, 1};  // [2, 4]
  std::vector<float> y(8);
  const float eps = 1e-5f;
  rms_norm(x.data(), nullptr, y.data(), 2, 4, eps, false);
  for (int r = 0; r < 2; ++r) {
    double sum = 0;
    for (int i = 0; i < 4; ++i) sum += x[r * 4 + i] * x[r * 4 + i];
    const double inv = 1.0 / std::sqrt(sum / 4 + eps);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[r * 4 + i], x[r * 4 + i] * inv, 1e-6) << r << i;
  }
}

TEST(LayerNorm, ZeroMeanUnitVarianceThenAffine) {
  const std::vector<float> x = {1, 2, 3, 4};  // [1, 4]
  const std::vector<float> w = {1, 1, 2, 2}, b = {0, 1, 0, 1};
  std::vector<float> y(4);
  layer_norm(x.data(), nullptr, nullptr, y.data(), 1, 4, 0.0f);
  const float s = 1.0f / std::sqrt(1.25f);
  EXPECT_NEAR(y[0], -1.5f * s, 1e-6);
  EXPECT_NEAR(y[3], 1.5f * s, 1e-6);
  layer_norm(x.data(), w.data(), b.data(), y.data(), 1, 4, 0.0f);
  EXPECT_NEAR(y[1], -0.5f * s + 1, 1e-6);
  EXPECT_NEAR(y[2], 0.5f * s * 2, 1e-6);
}

}  // namespace
}  // namespace kiln::ops
