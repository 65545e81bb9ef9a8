// The MoE layers of the fixtures against their reference activations: router logits of the
// HF gate modules (act.model.layers.N.mlp.gate, or .mlp.router: the input of every token of
// batch row 0, the logits of its first token), and each token's routing; and a small MoE
// block with gpt-oss's options (router bias, expert biases, clamped SwiGLU) against the
// formula.
#include "kiln/layers/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <random>
#include <vector>

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
    // The router module: `mlp.gate` (Mixtral, Qwen, DeepSeek) or `mlp.router` (gpt-oss).
    std::string gate = "act.model.layers." + std::to_string(i) + ".mlp.gate";
    if (!reference.contains(gate + ".out"))
      gate = "act.model.layers." + std::to_string(i) + ".mlp.router";
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

// E = 3 experts of I = 2 over hidden = 2, top-2 of the biased router logits softmaxed, experts
// (up + 1) * g * sigmoid(alpha g) with g, up clamped and every projection biased.
TEST(MoeOptions, RouterBiasExpertBiasesAndClampedSwigluFollowTheFormula) {
  const int64_t E = 3, H = 2, I = 2;
  MoeSpec spec;
  spec.num_experts = E;
  spec.top_k = 2;
  spec.expert_intermediate = I;
  spec.router = RouterKind::kTopKSoftmax;
  spec.router_bias = spec.expert_bias = true;
  spec.swiglu_limit = 1.5f;
  spec.swiglu_alpha = 1.702f;
  const std::vector<float> router = {0.5f, -1, 1, 1, -0.5f, 0.25f}, router_bias = {0.1f, 2, -0.3f};
  std::vector<float> gate(E * I * H), up(E * I * H), down(E * H * I);
  for (size_t i = 0; i < gate.size(); ++i) {
    gate[i] = 0.7f * static_cast<float>(i % 5) - 1.2f;
    up[i] = 1.3f - 0.6f * static_cast<float>(i % 4);
    down[i] = 0.2f * static_cast<float>(i % 7) - 0.5f;
  }
  const std::vector<float> gate_bias = {0.1f, -0.2f, 0.3f, 0.4f, -0.5f, 0.6f};
  const std::vector<float> up_bias = {-0.1f, 0.2f, 0.05f, -0.3f, 0.15f, 0.0f};
  const std::vector<float> down_bias = {0.01f, -0.02f, 0.03f, 0.04f, -0.05f, 0.06f};
  const std::string module = "moe";
  WeightMap weights = {
      {"moe/gate/kernel", Tensor::from_f32({E, H}, router)},
      {"moe/gate/bias", Tensor::from_f32({E}, router_bias)},
      {"moe/wi_0/kernel", Tensor::from_f32({E, I, H}, gate)},
      {"moe/wi_0/bias", Tensor::from_f32({E, I}, gate_bias)},
      {"moe/wi_1/kernel", Tensor::from_f32({E, I, H}, up)},
      {"moe/wi_1/bias", Tensor::from_f32({E, I}, up_bias)},
      {"moe/wo/kernel", Tensor::from_f32({E, H, I}, down)},
      {"moe/wo/bias", Tensor::from_f32({E, H}, down_bias)},
  };
  const Moe moe(spec, Activation::kSilu, H, weights, module);
  const std::vector<float> x = {1.0f, 2.0f, -1.5f, 0.5f, 3.0f, -2.0f};  // [3 tokens, H]
  std::vector<float> y(x.size());
  Workspace workspace;
  moe.forward(x.data(), 3, y.data(), workspace);
  double worst = 0.0;
  for (int64_t t = 0; t < 3; ++t) {
    const float* xt = x.data() + t * H;
    double logits[E];
    for (int64_t e = 0; e < E; ++e)
      logits[e] = router[e * H] * xt[0] + router[e * H + 1] * xt[1] + router_bias[e];
    float kiln_logits[E];
    moe.router_logits(xt, 1, kiln_logits);
    for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(kiln_logits[e], logits[e], 1e-6);
    // Top 2 of 3: all but the smallest.
    int64_t smallest = 0;
    for (int64_t e = 1; e < E; ++e)
      if (logits[e] < logits[smallest]) smallest = e;
    double top = -1e30;
    for (int64_t e = 0; e < E; ++e)
      if (e != smallest) top = std::max(top, logits[e]);
    double total = 0.0;
    for (int64_t e = 0; e < E; ++e)
      if (e != smallest) total += std::exp(logits[e] - top);
    for (int64_t c = 0; c < H; ++c) {
      double want = 0.0;
      for (int64_t e = 0; e < E; ++e) {
        if (e == smallest) continue;
        const double weight = std::exp(logits[e] - top) / total;
        double out = down_bias[e * H + c];
        for (int64_t i = 0; i < I; ++i) {
          const int64_t r = e * I + i;
          double g = gate[r * H] * xt[0] + gate[r * H + 1] * xt[1] + gate_bias[r];
          double u = up[r * H] * xt[0] + up[r * H + 1] * xt[1] + up_bias[r];
          g = std::min(g, 1.5);
          u = std::max(std::min(u, 1.5), -1.5);
          const double act = (u + 1.0) * g / (1.0 + std::exp(-1.702 * g));
          out += down[(e * H + c) * I + i] * act;
        }
        want += weight * out;
      }
      worst = std::max(worst, std::fabs(y[t * H + c] - want));
      EXPECT_NEAR(y[t * H + c], want, 1e-5) << "token " << t << " column " << c;
    }
  }
  std::cout << "MoE with router bias, expert biases and clamped SwiGLU: max abs err " << worst
            << std::endl;
}

// Llama 4's block on random weights against its formula: the top-1 logit's sigmoid s
// scales the chosen expert's input, y = shared(x) + expert_e(s * x), with SwiGLU experts.
TEST(MoeLlama4, SigmoidWeightScalesTheExpertInputAndTheSharedExpertAdds) {
  const int64_t E = 3, H = 4, I = 5, rows = 6;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 0.8f);
  auto random = [&](int64_t n) {
    std::vector<float> v(n);
    for (float& e : v) e = normal(rng);
    return v;
  };
  const std::string module = "decoder/layers_0/mlp";
  const std::vector<float> router = random(E * H), gates = random(E * I * H),
                           ups = random(E * I * H), downs = random(E * H * I),
                           shared_gate = random(I * H), shared_up = random(I * H),
                           shared_down = random(H * I), x = random(rows * H);
  WeightMap weights;
  weights[module + "/gate/kernel"] = Tensor::from_f32({E, H}, router);
  weights[module + "/wi_0/kernel"] = Tensor::from_f32({E, I, H}, gates);
  weights[module + "/wi_1/kernel"] = Tensor::from_f32({E, I, H}, ups);
  weights[module + "/wo/kernel"] = Tensor::from_f32({E, H, I}, downs);
  weights[module + "/shared_experts/wi_0/kernel"] = Tensor::from_f32({I, H}, shared_gate);
  weights[module + "/shared_experts/wi_1/kernel"] = Tensor::from_f32({I, H}, shared_up);
  weights[module + "/shared_experts/wo/kernel"] = Tensor::from_f32({H, I}, shared_down);
  MoeSpec spec;
  spec.num_experts = E;
  spec.top_k = 1;
  spec.expert_intermediate = I;
  spec.router = RouterKind::kTopKSigmoid;
  spec.weight_expert_input = true;
  spec.num_shared_experts = 1;
  spec.shared_intermediate = I;

  // down(silu(gate x) * up x) for [I, H] gate/up and [H, I] down, in double.
  auto swiglu = [&](const float* g, const float* u, const float* d, const std::vector<double>& in) {
    std::vector<double> inner(I), out(H, 0.0);
    for (int64_t i = 0; i < I; ++i) {
      double a = 0, b = 0;
      for (int64_t h = 0; h < H; ++h) a += g[i * H + h] * in[h], b += u[i * H + h] * in[h];
      inner[i] = a / (1 + std::exp(-a)) * b;
    }
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < I; ++i) out[h] += d[h * I + i] * inner[i];
    return out;
  };
  auto expected = [&](bool weigh_input) {
    std::vector<double> y(rows * H);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<double> in(x.begin() + r * H, x.begin() + (r + 1) * H);
      int64_t best = 0;
      std::vector<double> logits(E, 0.0);
      for (int64_t e = 0; e < E; ++e) {
        for (int64_t h = 0; h < H; ++h) logits[e] += router[e * H + h] * in[h];
        if (logits[e] > logits[best]) best = e;
      }
      const double s = 1 / (1 + std::exp(-logits[best]));
      std::vector<double> scaled = in;
      if (weigh_input)
        for (double& v : scaled) v *= s;
      const std::vector<double> routed =
          swiglu(gates.data() + best * I * H, ups.data() + best * I * H,
                 downs.data() + best * H * I, scaled);
      const std::vector<double> shared =
          swiglu(shared_gate.data(), shared_up.data(), shared_down.data(), in);
      for (int64_t h = 0; h < H; ++h)
        y[r * H + h] = shared[h] + routed[h] * (weigh_input ? 1.0 : s);
    }
    return y;
  };
  Workspace workspace;
  auto error = [&](const MoeSpec& layer_spec, bool weigh_input) {
    const Moe moe(layer_spec, Activation::kSilu, H, weights, module);
    std::vector<float> y(rows * H);
    moe.forward(x.data(), rows, y.data(), workspace);
    const std::vector<double> want = expected(weigh_input);
    double worst = 0;
    for (int64_t i = 0; i < rows * H; ++i) worst = std::max(worst, std::fabs(y[i] - want[i]));
    return worst;
  };
  const double err = error(spec, true);
  std::cout << "Llama 4 MoE (input-weighted experts, shared expert): max abs err = " << err
            << std::endl;
  EXPECT_LE(err, 1e-5);
  MoeSpec output_weighted = spec;
  output_weighted.weight_expert_input = false;
  EXPECT_LE(error(output_weighted, false), 1e-5);
  EXPECT_GT(error(output_weighted, true), 1e-3);  // the two conventions differ
}

std::vector<std::string> moe_fixtures() {
  std::vector<std::string> names;
  for (const std::string& name : test::hf_fixture_names()) {
    const SafetensorsFile reference =
        SafetensorsFile::open(test::hf_fixture_path(name) + "/reference.safetensors");
    if (reference.contains("act.model.layers.1.mlp.gate.out") ||
        reference.contains("act.model.layers.1.mlp.router.out"))
      names.push_back(name);
  }
  return names;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureRouters, ::testing::ValuesIn(moe_fixtures()),
                         test::FixtureName());

}  // namespace
}  // namespace kiln
