#include "kiln/ops/activation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>

namespace kiln::ops {
namespace {

TEST(Activation, KnownValues) {
  EXPECT_NEAR(activate(Activation::kSilu, 1.0f), 1.0 / (1.0 + std::exp(-1.0)), 1e-7);
  EXPECT_NEAR(activate(Activation::kGeluExact, 1.0f), 0.8413447, 1e-6);
  EXPECT_NEAR(activate(Activation::kGeluTanh, 1.0f), 0.8411920, 1e-6);
  EXPECT_EQ(activate(Activation::kReluSquared, -2.0f), 0.0f);
  EXPECT_EQ(activate(Activation::kReluSquared, 3.0f), 9.0f);
  const float gate[] = {0.0f, 2.0f}, up[] = {5.0f, 3.0f};
  float y[2];
  gated_activation(Activation::kRelu, gate, up, y, 2);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], 6.0f);
}

// gpt-oss's clamped SwiGLU against its formula: gate clamped above at the limit, up clamped
// to [-limit, limit], (up + 1) * gate * sigmoid(alpha * gate).
TEST(Activation, ClampedSwigluFollowsItsFormula) {
  const float limit = 7.0f, alpha = 1.702f;
  const float gate[] = {-3.0f, 0.5f, 6.5f, 9.0f, -20.0f, 2.0f};
  const float up[] = {1.0f, -0.5f, 8.0f, -9.0f, 0.25f, 6.99f};
  float y[6];
  clamped_swiglu(gate, up, y, 6, limit, alpha);
  double worst = 0.0;
  for (int i = 0; i < 6; ++i) {
    const double g = std::min<double>(gate[i], limit);
    const double u = std::max<double>(std::min<double>(up[i], limit), -limit);
    const double want = (u + 1.0) * g / (1.0 + std::exp(-alpha * g));
    worst = std::max(worst, std::fabs(y[i] - want));
    EXPECT_NEAR(y[i], want, 1e-5 * (1.0 + std::fabs(want))) << "element " << i;
  }
  std::cout << "clamped swiglu max abs err " << worst << std::endl;
  // Clamping shows: gate 9 acts as 7, up 8 as 7 and -9 as -7.
  EXPECT_NEAR(y[3], (-7.0 + 1.0) * 7.0 / (1.0 + std::exp(-alpha * 7.0)), 1e-5);
  // y may alias its inputs.
  float both[] = {1.0f, 2.0f};
  clamped_swiglu(both, both + 1, both, 1, limit, alpha);
  EXPECT_NEAR(both[0], 3.0 / (1.0 + std::exp(-alpha)), 1e-6);
}

}  // namespace
}  // namespace kiln::ops
