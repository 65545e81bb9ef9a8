#include "kiln/ops/top_k.h"

#include <gtest/gtest.h>

namespace kiln::ops {
namespace {

TEST(TopK, LargestFirstLowerIndexOnTies) {
  const float x[] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f};
  EXPECT_EQ(argmax(x, 5), 1);
  EXPECT_EQ(top_k(x, 5, 3), (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(top_k(x, 5, 10).size(), 5u);
}

}  // namespace
}  // namespace kiln::ops
