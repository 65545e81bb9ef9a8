#include "kiln/runtime/sampler.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "kiln/core/error.h"

namespace kiln {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.5f, -1.0f, 0.0f};

std::map<int32_t, int> histogram(const SamplingParams& params, int draws) {
  Sampler sampler(params);
  std::map<int32_t, int> counts;
  for (int i = 0; i < draws; ++i) ++counts[sampler.sample(kLogits.data(), 5)];
  return counts;
}

TEST(Sampler, GreedyAtTemperatureZero) {
  Sampler sampler(SamplingParams{});
  EXPECT_EQ(sampler.sample(kLogits.data(), 5), 1);
}

TEST(Sampler, SameSeedSameSamplesAndTemperatureFollowsSoftmax) {
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 42;
  Sampler a(params), b(params);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(a.sample(kLogits.data(), 5), b.sample(kLogits.data(), 5));
  const int draws = 20000;
  auto counts = histogram(params, draws);
  // p(1) / p(2) = exp(0.5)
  const double ratio = static_cast<double>(counts[1]) / counts[2];
  std::cout << "p(1)/p(2) measured " << ratio << ", expected " << std::exp(0.5) << std::endl;
  EXPECT_NEAR(ratio, std::exp(0.5), 0.1);
  EXPECT_GT(counts[3], 0);
}

TEST(Sampler, TopKAndTopPRestrictTheCandidates) {
  SamplingParams params;
  params.temperature = 2.0f;
  params.top_k = 2;
  auto counts = histogram(params, 2000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 0);
  EXPECT_GT(counts[2], 0);
  params.top_k = 0;
  params.top_p = 0.05f;  // the most likely token alone reaches it
  counts = histogram(params, 200);
  EXPECT_EQ(counts.size(), 1u);
  EXPECT_EQ(counts[1], 200);
}

TEST(Sampler, RejectsBadSettings) {
  SamplingParams params;
  params.top_p = 0.0f;
  EXPECT_THROW(Sampler{params}, Error);
  params.top_p = 1.0f;
  params.top_k = -1;
  EXPECT_THROW(Sampler{params}, Error);
}

}  // namespace
}  // namespace kiln
