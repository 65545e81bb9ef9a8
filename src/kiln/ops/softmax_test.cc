#include "kiln/ops/softmax.h"

#include <gtest/gtest.h>

namespace kiln::ops {
namespace {

TEST(Softmax, SumsToOneAndIsShiftInvariant) {
  const float x[] = {1, 2, 3, 1001, 1002, 1003};  // [2, 3]
  float y[6];
  softmax(x, y, 2, 3);
  EXPECT_NEAR(y[0] + y[1] + y[2], 1.0, 1e-6);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(y[i], y[i + 3], 1e-6);
}

}  // namespace
}  // namespace kiln::ops
