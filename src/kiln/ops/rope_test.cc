#include "kiln/ops/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kiln/core/error.h"

namespace kiln::ops {
namespace {

TEST(RopeInvFreq, DefaultIsThetaToTheMinusTwoIOverDim) {
  RopeSpec rope;
  rope.theta = 10000.0;
  const std::vector<float> inv_freq = rope_inv_freq(rope, 8);
  ASSERT_EQ(inv_freq.size(), 4u);
  for (int k = 0; k < 4; ++k) EXPECT_FLOAT_EQ(inv_freq[k], std::pow(10000.0, -2.0 * k / 8));
  rope.rotary_dim = 4;  // partial rotary: frequencies over the rotated part only
  EXPECT_FLOAT_EQ(rope_inv_freq(rope, 8)[1], std::pow(10000.0, -0.5));
  rope.type = RopeType::kYarn;
  EXPECT_THROW(rope_inv_freq(rope, 8), Error);
}

TEST(ApplyRope, RotatesHalfSplitAndInterleavedPairs) {
  const float inv_freq[] = {1.0f, 0.5f};  // [2]
  const int64_t positions[] = {0, 1};     // [2]
  // [2 tokens, 1 head, 6 dims]: rotary_dim 4, the last 2 dims pass through.
  std::vector<float> half = {1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6};
  apply_rope(half.data(), positions, 2, 1, 6, 4, inv_freq, false);
  EXPECT_EQ(std::vector<float>(half.begin(), half.begin() + 6),
            (std::vector<float>{1, 2, 3, 4, 5, 6}));  // position 0: identity
  // Position 1, pairs (0, 2) at angle 1 and (1, 3) at angle 0.5.
  EXPECT_FLOAT_EQ(half[6], 1 * std::cos(1.0f) - 3 * std::sin(1.0f));
  EXPECT_FLOAT_EQ(half[8], 3 * std::cos(1.0f) + 1 * std::sin(1.0f));
  EXPECT_FLOAT_EQ(half[7], 2 * std::cos(0.5f) - 4 * std::sin(0.5f));
  EXPECT_FLOAT_EQ(half[10], 5);
  std::vector<float> pairs = {1, 2, 3, 4, 5, 6};
  const int64_t one[] = {1};
  apply_rope(pairs.data(), one, 1, 1, 6, 4, inv_freq, true);  // pairs (0, 1) and (2, 3)
  EXPECT_FLOAT_EQ(pairs[0], 1 * std::cos(1.0f) - 2 * std::sin(1.0f));
  EXPECT_FLOAT_EQ(pairs[1], 2 * std::cos(1.0f) + 1 * std::sin(1.0f));
  EXPECT_FLOAT_EQ(pairs[3], 4 * std::cos(0.5f) + 3 * std::sin(0.5f));
}

}  // namespace
}  // namespace kiln::ops
