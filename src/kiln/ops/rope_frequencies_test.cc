// Tests of the RoPE frequencies of every type against the formulas evaluated in double.
#include "kiln/ops/rope_frequencies.h"

#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <numbers>

#include "kiln/core/error.h"

namespace kiln::ops {
namespace {

std::vector<double> default_inv_freq(double theta, int64_t dim) {
  std::vector<double> out;  // [dim / 2]
  for (int64_t k = 0; k < dim / 2; ++k)
    out.push_back(std::pow(theta, -static_cast<double>(2 * k) / static_cast<double>(dim)));
  return out;
}

// Max relative error of `actual` against `expected` (same lengths required).
double max_rel_error(const std::vector<float>& actual, const std::vector<double>& expected) {
  EXPECT_EQ(actual.size(), expected.size());
  double worst = 0;
  for (size_t k = 0; k < std::min(actual.size(), expected.size()); ++k)
    worst = std::max(worst, std::abs(actual[k] - expected[k]) / std::abs(expected[k]));
  return worst;
}

void expect_close(const std::vector<float>& actual, const std::vector<double>& expected,
                  const char* what) {
  const double err = max_rel_error(actual, expected);
  std::cout << what << ": max relative error " << err << "\n";
  EXPECT_LT(err, 1e-6) << what;
}

RopeSpec spec_of(RopeType type, double theta = 10000.0) {
  RopeSpec rope;
  rope.type = type;
  rope.theta = theta;
  return rope;
}

TEST(RopeFrequencies, DefaultUsesHeadDimOrRotaryDim) {
  RopeSpec rope = spec_of(RopeType::kDefault);
  RopeFrequencies f = rope_frequencies(rope, 16, 20);
  expect_close(f.inv_freq, default_inv_freq(10000.0, 16), "default");
  EXPECT_EQ(f.attention_scaling, 1.0f);
  rope.rotary_dim = 4;  // partial rotary: frequencies over the rotated part only
  expect_close(rope_frequencies(rope, 16, 20).inv_freq, default_inv_freq(10000.0, 4), "partial");
}

TEST(RopeFrequencies, LinearDividesByFactor) {
  RopeSpec rope = spec_of(RopeType::kLinear);
  rope.factor = 2.0;
  std::vector<double> expected = default_inv_freq(10000.0, 16);
  for (double& f : expected) f /= 2.0;
  expect_close(rope_frequencies(rope, 16, 1000).inv_freq, expected, "linear");
}

TEST(RopeFrequencies, DynamicGrowsThetaOnlyBeyondMaxPosition) {
  RopeSpec rope = spec_of(RopeType::kDynamic);
  rope.factor = 2.0;
  rope.max_position = 16;
  expect_close(rope_frequencies(rope, 16, 16).inv_freq, default_inv_freq(10000.0, 16),
               "dynamic within max");
  const double grown = 10000.0 * std::pow(2.0 * 20 / 16 - 1.0, 16.0 / 14.0);
  expect_close(rope_frequencies(rope, 16, 20).inv_freq, default_inv_freq(grown, 16),
               "dynamic at 20");
  EXPECT_EQ(rope_frequency_key(rope, 3), rope_frequency_key(rope, 16));
  EXPECT_NE(rope_frequency_key(rope, 16), rope_frequency_key(rope, 17));
  EXPECT_NE(rope_frequency_key(rope, 17), rope_frequency_key(rope, 18));
  EXPECT_EQ(rope_frequency_key(spec_of(RopeType::kYarn), 5),
            rope_frequency_key(spec_of(RopeType::kYarn), 5000));
}

TEST(RopeFrequencies, YarnRampsBetweenExtrapolationAndInterpolation) {
  // dim 16, theta 1e4, original 16: beta_fast=32 gives pair -2.2 (-> 0), beta_slow=1 gives
  // 0.81 (-> 1): pair 0 keeps its frequency, all others are divided by the factor.
  RopeSpec rope = spec_of(RopeType::kYarn);
  rope.factor = 4.0;
  rope.original_max_position = 16;
  RopeFrequencies f = rope_frequencies(rope, 16, 20);
  std::vector<double> expected = default_inv_freq(10000.0, 16);
  for (size_t k = 1; k < expected.size(); ++k) expected[k] /= 4.0;
  expect_close(f.inv_freq, expected, "yarn truncated");
  EXPECT_NEAR(f.attention_scaling, 0.1 * std::log(4.0) + 1.0, 1e-7);

  // Without truncation the ramp spans the fractional range [0, 0.8118...].
  rope.truncate = false;
  const double high = 16.0 * std::log(16.0 / (2.0 * std::numbers::pi)) / (2.0 * std::log(10000.0));
  f = rope_frequencies(rope, 16, 20);
  expected = default_inv_freq(10000.0, 16);
  for (size_t k = 1; k < expected.size(); ++k) {
    const double ramp = std::min(1.0, k / high);
    expected[k] = expected[k] / 4.0 * ramp + expected[k] * (1.0 - ramp);
  }
  expect_close(f.inv_freq, expected, "yarn untruncated");
}

TEST(RopeFrequencies, YarnAttentionFactorVariants) {
  RopeSpec rope = spec_of(RopeType::kYarn);
  rope.factor = 40.0;
  rope.original_max_position = 4096;
  rope.rotary_dim = 64;
  rope.mscale = 1.0;  // DeepSeek-V3: equal mscales cancel
  rope.mscale_all_dim = 1.0;
  EXPECT_NEAR(rope_frequencies(rope, 64, 1).attention_scaling, 1.0, 1e-7);
  rope.mscale = 0.707;
  rope.mscale_all_dim = 1.0;
  const double expected = (0.1 * 0.707 * std::log(40.0) + 1) / (0.1 * std::log(40.0) + 1);
  EXPECT_NEAR(rope_frequencies(rope, 64, 1).attention_scaling, expected, 1e-7);
  rope.attention_factor = 1.25;  // an explicit value wins
  EXPECT_NEAR(rope_frequencies(rope, 64, 1).attention_scaling, 1.25, 1e-7);
}

TEST(RopeFrequencies, Llama3SmoothsBetweenWavelengthBands) {
  RopeSpec rope = spec_of(RopeType::kLlama3, 500000.0);
  rope.factor = 8.0;
  rope.low_freq_factor = 1.0;
  rope.high_freq_factor = 4.0;
  rope.original_max_position = 64;  // puts pair 1 (wavelength 32.5) in the smoothed band
  const std::vector<double> base = default_inv_freq(500000.0, 16);
  std::vector<double> expected;
  int bands[3] = {0, 0, 0};
  for (double f : base) {
    const double wavelength = 2 * std::numbers::pi / f;
    if (wavelength < 64.0 / 4.0) {
      expected.push_back(f);
      ++bands[0];
    } else if (wavelength > 64.0 / 1.0) {
      expected.push_back(f / 8.0);
      ++bands[2];
    } else {
      const double smooth = (64.0 / wavelength - 1.0) / 3.0;
      expected.push_back((1 - smooth) * f / 8.0 + smooth * f);
      ++bands[1];
    }
  }
  EXPECT_GT(bands[0], 0);
  EXPECT_GT(bands[1], 0);
  EXPECT_GT(bands[2], 0);
  expect_close(rope_frequencies(rope, 16, 20).inv_freq, expected, "llama3");
}

TEST(RopeFrequencies, LongRopeChoosesFactorsByLength) {
  RopeSpec rope = spec_of(RopeType::kLongRope);
  rope.original_max_position = 16;
  rope.factor = 16.0;
  for (int k = 0; k < 8; ++k) {
    rope.short_factor.push_back(1.0 + 0.1 * k);
    rope.long_factor.push_back(1.5 + 0.3 * k);
  }
  const std::vector<double> base = default_inv_freq(10000.0, 16);
  std::vector<double> short_expected, long_expected;
  for (int k = 0; k < 8; ++k) {
    short_expected.push_back(base[k] / rope.short_factor[k]);
    long_expected.push_back(base[k] / rope.long_factor[k]);
  }
  RopeFrequencies f = rope_frequencies(rope, 16, 16);
  expect_close(f.inv_freq, short_expected, "longrope short");
  EXPECT_NEAR(f.attention_scaling, std::sqrt(2.0), 1e-7);  // 1 + ln 16 / ln 16
  expect_close(rope_frequencies(rope, 16, 17).inv_freq, long_expected, "longrope long");
  EXPECT_EQ(rope_frequency_key(rope, 1), rope_frequency_key(rope, 16));
  EXPECT_NE(rope_frequency_key(rope, 16), rope_frequency_key(rope, 17));
  EXPECT_EQ(rope_frequency_key(rope, 17), rope_frequency_key(rope, 1000));
  // Phi-3.5-MoE's explicit magnitudes replace the derived factor, by length.
  rope.short_mscale = 1.25;
  rope.long_mscale = 1.5;
  EXPECT_EQ(rope_frequencies(rope, 16, 16).attention_scaling, 1.25f);
  EXPECT_EQ(rope_frequencies(rope, 16, 17).attention_scaling, 1.5f);
  rope.long_factor.pop_back();
  EXPECT_THROW(rope_frequencies(rope, 16, 17), Error);
}

TEST(RopeFrequencies, RejectsUnusableSettings) {
  RopeSpec rope = spec_of(RopeType::kDefault);
  rope.rotary_dim = 7;
  EXPECT_THROW(rope_frequencies(rope, 16, 1), Error);
  rope.rotary_dim = 32;
  EXPECT_THROW(rope_frequencies(rope, 16, 1), Error);
  EXPECT_THROW(rope_frequencies(spec_of(RopeType::kNone), 16, 1), Error);
  RopeSpec linear = spec_of(RopeType::kLinear);
  linear.factor = 0;
  EXPECT_THROW(rope_frequencies(linear, 16, 1), Error);
}

}  // namespace
}  // namespace kiln::ops
