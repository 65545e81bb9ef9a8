// The MoE layers of the fixtures against their reference activations: router logits of the
// HF gate modules (act.model.layers.N.mlp.gate: the input of every token of batch row 0,
// the logits of its first token), and each token's routing.
#include "kiln/layers/moe.h"

#include <gtest/gtest.h>

#include <iostream>

#include "hf_fixtures.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"

namespace kiln {
namespace {

class FixtureRouters : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureRouters, LogitsMatchTheGateModulesAndRoutesAreWellFormed) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  const LoadedModel loaded = load_model(dir);
  const Model model(loaded.spec, loaded.weights);
  const SafetensorsFile reference = SafetensorsFile::open(dir + "/reference.safetensors");
  int checked = 0;
  for (int64_t i = 0; i < loaded.spec.num_layers(); ++i) {
    const FeedForward& block = model.layer(i).mlp();
    if (!block.is_moe()) continue;
    const Moe& moe = block.moe();
    const int64_t E = moe.spec().num_experts, k = moe.spec().top_k;
    const std::string gate = "act.model.layers." + std::to_string(i) + ".mlp.gate";
    const Tensor in = reference.get(gate + ".in").contiguous();  // [hidden] or [T, hidden]
    const Tensor expected = reference.get(gate + ".out");        // [E]: the first token
    ASSERT_EQ(expected.numel(), E);
    Tensor logits = Tensor::zeros(DType::F32, {E});
    moe.router_logits(in.data<float>(), 1, logits.mutable_data<float>());
    const double err = test::max_abs_diff(logits, expected.contiguous());
    std::cout << GetParam() << ": layer " << i << " router logits max abs err = " << err
              << std::endl;
    EXPECT_LE(err, 1e-5);

    const Tensor tokens = reference.get("act.model.layers." + std::to_string(i) + ".mlp.in");
    const int64_t rows = tokens.dim(0);
    std::vector<float> all_logits(rows * E);  // [T, E]
    moe.router_logits(tokens.contiguous().data<float>(), rows, all_logits.data());
    std::vector<int64_t> experts(rows * k);  // [T, k]
    std::vector<float> weights(rows * k);    // [T, k]
    moe.route(all_logits.data(), rows, experts.data(), weights.data());
    for (int64_t r = 0; r < rows; ++r) {
      float sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        EXPECT_GE(experts[r * k + j], 0);
        EXPECT_LT(experts[r * k + j], E);
        for (int64_t other = 0; other < j; ++other)
          EXPECT_NE(experts[r * k + j], experts[r * k + other]) << "token " << r;
        EXPECT_GT(weights[r * k + j], 0.0f);
        sum += weights[r * k + j];
      }
      if (moe.spec().router == RouterKind::kTopKSoftmax || moe.spec().norm_topk_prob) {
        EXPECT_NEAR(sum, moe.spec().routed_scaling_factor, 1e-5) << "token " << r;
      }
    }
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

std::vector<std::string> moe_fixtures() {
  std::vector<std::string> names;
  for (const std::string& name : test::hf_fixture_names())
    if (SafetensorsFile::open(test::hf_fixture_path(name) + "/reference.safetensors")
            .contains("act.model.layers.1.mlp.gate.out"))
      names.push_back(name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureRouters, ::testing::ValuesIn(moe_fixtures()),
                         test::FixtureName());

}  // namespace
}  // namespace kiln
