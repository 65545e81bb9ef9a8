#include "kiln/ops/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace kiln::ops {
namespace {

TEST(ApplyRope, RotatesHalfSplitPairsAndPassesTheRestThrough) {
  const float inv_freq[] = {1.0f, 0.5f};  // [2]
  const int64_t positions[] = {0, 1};     // [2]
  // [2 tokens, 1 head, 6 dims]: rotary_dim 4, the last 2 dims pass through.
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6};
  apply_rope(x.data(), positions, 2, 1, 6, 4, inv_freq, 1.0f, false);
  EXPECT_EQ(std::vector<float>(x.begin(), x.begin() + 6),
            (std::vector<float>{1, 2, 3, 4, 5, 6}));  // position 0: identity
  // Position 1: pair (0, 2) turns by 1, pair (1, 3) by 0.5.
  EXPECT_FLOAT_EQ(x[6], 1 * std::cos(1.0f) - 3 * std::sin(1.0f));
  EXPECT_FLOAT_EQ(x[8], 3 * std::cos(1.0f) + 1 * std::sin(1.0f));
  EXPECT_FLOAT_EQ(x[7], 2 * std::cos(0.5f) - 4 * std::sin(0.5f));
  EXPECT_FLOAT_EQ(x[10], 5);
  EXPECT_FLOAT_EQ(x[11], 6);
}

TEST(ApplyRope, InterleavedPairsAndAttentionScaling) {
  const float inv_freq[] = {1.0f, 0.5f};
  const int64_t one[] = {1};
  std::vector<float> x = {1, 2, 3, 4};  // [1, 1, 4]: pairs (0, 1) and (2, 3)
  apply_rope(x.data(), one, 1, 1, 4, 4, inv_freq, 2.0f, true);
  EXPECT_FLOAT_EQ(x[0], 2 * (1 * std::cos(1.0f) - 2 * std::sin(1.0f)));
  EXPECT_FLOAT_EQ(x[1], 2 * (2 * std::cos(1.0f) + 1 * std::sin(1.0f)));
  EXPECT_FLOAT_EQ(x[3], 2 * (4 * std::cos(0.5f) + 3 * std::sin(0.5f)));
}

}  // namespace
}  // namespace kiln::ops
