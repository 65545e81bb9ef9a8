#include "kiln/ops/activation.h"

#include <gtest/gtest.h>

#include <cmath>

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

}  // namespace
}  // namespace kiln::ops
