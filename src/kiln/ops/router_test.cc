#include "kiln/ops/router.h"

#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <vector>

#include "kiln/core/error.h"

namespace kiln::ops {
namespace {

float logit(float p) {
  return std::log(p / (1.0f - p));
}

MoeSpec spec_of(RouterKind router, int64_t experts, int64_t top_k) {
  MoeSpec spec;
  spec.router = router;
  spec.num_experts = experts;
  spec.top_k = top_k;
  return spec;
}

TEST(Router, TopKThenSoftmaxWeighsOnlyThePicks) {
  const MoeSpec spec = spec_of(RouterKind::kTopKSoftmax, 4, 2);
  const float logits[] = {1.0f, 3.0f, 0.0f, 2.0f};
  int64_t experts[2];
  float weights[2];
  route_tokens(spec, logits, nullptr, 1, experts, weights);
  EXPECT_EQ(experts[0], 1);
  EXPECT_EQ(experts[1], 3);
  const float first = 1.0f / (1.0f + std::exp(-1.0f));  // softmax of (3, 2)
  EXPECT_NEAR(weights[0], first, 1e-6);
  EXPECT_NEAR(weights[1], 1.0f - first, 1e-6);
}

// Llama 4: the k largest logits, each weighed by its own sigmoid (no normalization).
TEST(Router, TopKThenSigmoidWeighsEachPickBySigmoidOfItsLogit) {
  const MoeSpec spec = spec_of(RouterKind::kTopKSigmoid, 4, 2);
  const float logits[] = {1.0f, -3.0f, 0.5f, -0.25f, -2.0f, 0.0f, 4.0f, 1.5f};  // [2, 4]
  int64_t experts[4];
  float weights[4];
  route_tokens(spec, logits, nullptr, 2, experts, weights);
  const int64_t expected_experts[] = {0, 2, 2, 3};
  const float expected_logits[] = {1.0f, 0.5f, 4.0f, 1.5f};
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(experts[j], expected_experts[j]) << j;
    const float sigmoid = 1.0f / (1.0f + std::exp(-expected_logits[j]));
    EXPECT_NEAR(weights[j], sigmoid, 1e-7) << j << ": |err| = " << std::fabs(weights[j] - sigmoid);
  }
}

TEST(Router, SoftmaxThenTopKRenormalizesOnlyWithNormTopkProb) {
  MoeSpec spec = spec_of(RouterKind::kSoftmaxTopK, 4, 2);
  const float logits[] = {1.0f, 3.0f, 0.0f, 2.0f};
  const float total = std::exp(1.0f) + std::exp(3.0f) + std::exp(0.0f) + std::exp(2.0f);
  int64_t experts[2];
  float weights[2];
  route_tokens(spec, logits, nullptr, 1, experts, weights);
  EXPECT_EQ(experts[0], 1);
  EXPECT_EQ(experts[1], 3);
  EXPECT_NEAR(weights[0], std::exp(3.0f) / total, 1e-6);
  EXPECT_NEAR(weights[1], std::exp(2.0f) / total, 1e-6);
  spec.norm_topk_prob = true;
  route_tokens(spec, logits, nullptr, 1, experts, weights);
  EXPECT_NEAR(weights[0] + weights[1], 1.0f, 1e-6);
  EXPECT_NEAR(weights[0], 1.0f / (1.0f + std::exp(-1.0f)), 1e-6);
}

// Eight experts in four groups of two. Biased scores: group 0 {0.9, 0.1}, group 1
// {0.62, 0.58}, group 2 {0.7, 0.2}, group 3 {0.2, 0.2}. Ranked by the sum of their two best
// scores, groups 1 and 0 are kept (by their best alone it would be 0 and 2), so expert 4
// (0.7) is out; inside them the bias makes expert 2 (0.42 + 0.2) beat expert 3 (0.6 - 0.02).
// The weights use the unbiased scores.
TEST(Router, SigmoidGroupSelectsWithBiasInBestGroupsAndWeighsWithoutBias) {
  MoeSpec spec = spec_of(RouterKind::kSigmoidGroup, 8, 2);
  spec.n_group = 4;
  spec.topk_group = 2;
  spec.norm_topk_prob = true;
  spec.routed_scaling_factor = 2.5;
  const std::vector<float> scores = {0.9f, 0.1f, 0.42f, 0.6f, 0.7f, 0.2f, 0.2f, 0.2f};
  const std::vector<float> bias = {0.0f, 0.0f, 0.2f, -0.02f, 0.0f, 0.0f, 0.0f, 0.0f};
  std::vector<float> logits;  // [1, 8]
  for (float s : scores) logits.push_back(logit(s));
  int64_t experts[2];
  float weights[2];
  route_tokens(spec, logits.data(), bias.data(), 1, experts, weights);
  EXPECT_EQ(experts[0], 0);
  EXPECT_EQ(experts[1], 2);
  EXPECT_NEAR(weights[0], 0.9f / 1.32f * 2.5f, 1e-5);
  EXPECT_NEAR(weights[1], 0.42f / 1.32f * 2.5f, 1e-5);

  spec.norm_topk_prob = false;
  route_tokens(spec, logits.data(), bias.data(), 1, experts, weights);
  EXPECT_NEAR(weights[0], 0.9f * 2.5f, 1e-5);
  EXPECT_NEAR(weights[1], 0.42f * 2.5f, 1e-5);

  spec.n_group = 1;  // no group limit: the best biased scores overall
  spec.topk_group = 1;
  route_tokens(spec, logits.data(), bias.data(), 1, experts, weights);
  EXPECT_EQ(experts[0], 0);
  EXPECT_EQ(experts[1], 4);
}

// DeepSeek-V2's group_limited_greedy: softmax scores, groups ranked by their best score. Six
// experts in three groups of two: group 0 {3.0, -5.0} has the best member, group 1 {2.5, 2.4}
// the best sum; with one group kept only experts 0 and 1 can be chosen.
TEST(Router, SoftmaxGroupLimitedGreedyKeepsTheGroupsWithTheBestMember) {
  MoeSpec spec = spec_of(RouterKind::kSoftmaxTopK, 6, 2);
  spec.n_group = 3;
  spec.topk_group = 1;
  spec.routed_scaling_factor = 16.0;
  const std::vector<float> logits = {3.0f, -5.0f, 2.5f, 2.4f, 0.0f, 0.0f};
  double total = 0;
  for (float l : logits) total += std::exp(static_cast<double>(l));
  int64_t experts[2];
  float weights[2];
  route_tokens(spec, logits.data(), nullptr, 1, experts, weights);
  EXPECT_EQ(experts[0], 0);
  EXPECT_EQ(experts[1], 1);
  const double w0 = std::exp(3.0) / total * 16, w1 = std::exp(-5.0) / total * 16;
  std::cout << "group_limited_greedy weights: |err| = " << std::fabs(weights[0] - w0) << ", "
            << std::fabs(weights[1] - w1) << std::endl;
  EXPECT_NEAR(weights[0], w0, 1e-5);
  EXPECT_NEAR(weights[1], w1, 1e-7);
  spec.topk_group = 2;  // groups 0 and 1 (best members 3.0 and 2.5): experts 0 and 2
  route_tokens(spec, logits.data(), nullptr, 1, experts, weights);
  EXPECT_EQ(experts[0], 0);
  EXPECT_EQ(experts[1], 2);
  spec.n_group = 4;  // does not divide 6 experts
  EXPECT_THROW(route_tokens(spec, logits.data(), nullptr, 1, experts, weights), Error);
}

// Phi-3.5-MoE's sparsemixer at inference with eps 0.01: a pick's weight is its softmax among
// the experts whose relative gap to it, (best - l) / max(|l|, best), is at most 0.02.
TEST(Router, SparseMixerWeighsEachPickAmongTheExpertsWithinTheMargin) {
  MoeSpec spec = spec_of(RouterKind::kSparseMixer, 6, 2);
  spec.sparsemixer_eps = 0.01f;
  // Row 0: pick 1 is expert 0 (1.0) among {1.0, 0.99, 0.985}; pick 2 is expert 1 (0.99)
  // among {0.99, 0.985} (0.5 is 49% below). Row 1: both picks stand alone (weight 1), the
  // second margin measured against every logit (-1.5 is 0.5 from -1.0, relative 1/3).
  const std::vector<float> logits = {1.0f,  0.99f, 0.5f,  -0.2f, 0.985f, 0.3f,
                                     -1.0f, 4.0f,  -3.0f, -1.5f, -2.0f,  -2.5f};
  int64_t experts[4];
  float weights[4];
  route_tokens(spec, logits.data(), nullptr, 2, experts, weights);
  const double w0 = 1 / (1 + std::exp(0.99 - 1.0) + std::exp(0.985 - 1.0));
  const double w1 = 1 / (1 + std::exp(0.985 - 0.99));
  const int64_t want_experts[] = {0, 1, 1, 0};
  const double want_weights[] = {w0, w1, 1.0, 1.0};
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(experts[j], want_experts[j]) << j;
    EXPECT_NEAR(weights[j], want_weights[j], 1e-6)
        << j << ": |err| = " << std::fabs(weights[j] - want_weights[j]);
  }
  spec.top_k = 3;  // sparsemixer picks exactly two
  EXPECT_THROW(route_tokens(spec, logits.data(), nullptr, 2, experts, weights), Error);
}

TEST(Router, RejectsImpossibleSettings) {
  MoeSpec spec = spec_of(RouterKind::kSigmoidGroup, 8, 9);
  const std::vector<float> logits(8, 0.0f);
  int64_t experts[9];
  float weights[9];
  EXPECT_THROW(route_tokens(spec, logits.data(), nullptr, 1, experts, weights), Error);
  spec.top_k = 2;
  spec.n_group = 3;
  EXPECT_THROW(route_tokens(spec, logits.data(), nullptr, 1, experts, weights), Error);
  spec.n_group = 4;
  spec.topk_group = 5;
  EXPECT_THROW(route_tokens(spec, logits.data(), nullptr, 1, experts, weights), Error);
}

}  // namespace
}  // namespace kiln::ops
