#include "kiln/ops/top_k.h"

#include <gtest/gtest.h>

#include <vector>

namespace kiln::ops {
namespace {

TEST(TopK, LargestFirstLowerIndexOnTies) {
  const float x[] = {0.5f, 3.0f, -1.0f, 3.0f, 2.0f};
  EXPECT_EQ(argmax(x, 5), 1);
  std::vector<int64_t> indices(5);
  top_k(x, 5, 3, indices.data());
  EXPECT_EQ(std::vector<int64_t>(indices.begin(), indices.begin() + 3),
            (std::vector<int64_t>{1, 3, 4}));
  top_k(x, 5, 5, indices.data());
  EXPECT_EQ(indices, (std::vector<int64_t>{1, 3, 4, 0, 2}));
}

}  // namespace
}  // namespace kiln::ops
