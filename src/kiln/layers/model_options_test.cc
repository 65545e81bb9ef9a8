// Model- and block-level options against their formulas on a fixture's weights: Granite's
// residual multiplier (each branch scaled before the residual add), the logit scale (Cohere's
// logit_scale, Granite's 1 / logits_scaling), and Qwen2-MoE's sigmoid gate on the shared
// expert.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <map>
#include <random>
#include <vector>

#include "hf_fixtures.h"
#include "kiln/layers/model.h"
#include "kiln/layers/moe.h"
#include "kiln/models/loader.h"
#include "kiln/models/weight_names.h"
#include "kiln/runtime/kv_cache.h"
#include "test_util.h"

namespace kiln {
namespace {

const std::vector<int32_t> kTokens = {1, 5, 9, 3, 7, 2};

// The model's activations by name, and its logits [1, T, V].
struct ModelRun {
  std::map<std::string, Tensor> acts;
  Tensor logits;
};

ModelRun run(const ModelSpec& spec, const WeightMap& weights) {
  const Model model(spec, weights);
  KvCache cache(spec, 1, 16);
  ModelRun out;
  const ActivationObserver observer = [&](const std::string& name, const Tensor& t) {
    out.acts[name] = t.contiguous(true);
  };
  ForwardOptions options;
  options.observer = &observer;
  out.logits =
      model.forward(kTokens.data(), 1, static_cast<int64_t>(kTokens.size()), cache, options);
  return out;
}

// Granite: x + s * attention(norm(x)), then + s * mlp(norm(.)): each layer's output is its
// input plus s times the two branch outputs it reports.
TEST(ModelOptions, ResidualScaleMultipliesEachBranch) {
  LoadedModel m = load_model(test::hf_fixture_path("llama"));
  for (LayerSpec& layer : m.spec.layers) layer.residual_scale = 0.375f;
  const ModelRun r = run(m.spec, m.weights);
  double worst = 0;
  for (int64_t i = 0; i < m.spec.num_layers(); ++i) {
    const Tensor& in = r.acts.at(i == 0 ? names::token_embedder() : names::layer(i - 1));
    const Tensor& out = r.acts.at(names::layer(i));
    const Tensor& attention = r.acts.at(names::attention(i));
    const Tensor& mlp = r.acts.at(names::mlp(i));
    for (int64_t k = 0; k < in.numel(); ++k) {
      const double want =
          in.data<float>()[k] + 0.375 * (static_cast<double>(attention.data<float>()[k]) +
                                         static_cast<double>(mlp.data<float>()[k]));
      worst = std::max(worst, std::fabs(out.data<float>()[k] - want));
    }
  }
  std::cout << "residual_scale 0.375: max abs err = " << worst << std::endl;
  EXPECT_LE(worst, 1e-5);
  // The scale changes the model.
  LoadedModel plain = load_model(test::hf_fixture_path("llama"));
  EXPECT_GT(test::max_abs_diff(run(plain.spec, plain.weights).logits, r.logits), 1e-3);
}

TEST(ModelOptions, LogitScaleMultipliesTheLogits) {
  LoadedModel m = load_model(test::hf_fixture_path("llama"));
  const Tensor plain = run(m.spec, m.weights).logits;
  m.spec.logit_scale = 0.0625f;  // Granite: logits_scaling 16
  const Tensor scaled = run(m.spec, m.weights).logits;
  double worst = 0;
  for (int64_t k = 0; k < plain.numel(); ++k)
    worst = std::max(worst, std::fabs(scaled.data<float>()[k] - plain.data<float>()[k] * 0.0625));
  std::cout << "logit_scale 1/16: max abs err = " << worst << std::endl;
  EXPECT_LE(worst, 1e-7);
  m.spec.logit_scale = std::nanf("");
  EXPECT_THROW(Model(m.spec, m.weights), Error);
}

// Qwen2-MoE: y = routed(x) + sigmoid(x . w) * shared(x), w = shared_expert_gate [1, hidden].
TEST(ModelOptions, SharedExpertGateScalesTheSharedExpertBySigmoid) {
  const int64_t E = 3, H = 4, I = 5, rows = 7;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.9f);
  auto random = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(n);
    for (float& e : v) e = normal(rng);
    return Tensor::from_f32(shape, v);
  };
  const std::string module = names::mlp(0);
  WeightMap weights;
  weights[module + "/gate/kernel"] = random({E, H});
  weights[module + "/wi_0/kernel"] = random({E, I, H});
  weights[module + "/wi_1/kernel"] = random({E, I, H});
  weights[module + "/wo/kernel"] = random({E, H, I});
  for (const char* part : {"wi_0", "wi_1"})
    weights[module + "/shared_experts/" + part + "/kernel"] = random({I, H});
  weights[module + "/shared_experts/wo/kernel"] = random({H, I});
  weights[module + "/shared_expert_gate/kernel"] = random({1, H});
  MoeSpec spec;
  spec.num_experts = E;
  spec.top_k = 2;
  spec.expert_intermediate = I;
  spec.router = RouterKind::kSoftmaxTopK;
  spec.num_shared_experts = 1;
  spec.shared_intermediate = I;
  const Tensor x = random({rows, H});
  Workspace workspace;
  auto forward = [&](const MoeSpec& s) {
    std::vector<float> y(rows * H);
    Moe(s, Activation::kSilu, H, weights, module)
        .forward(x.data<float>(), rows, y.data(), workspace);
    return y;
  };
  MoeSpec gated = spec;
  gated.shared_expert_gate = true;
  const std::vector<float> with_gate = forward(gated), without = forward(spec);
  const Mlp shared(MlpSpec{I, true, Activation::kSilu, false}, H, weights,
                   module + "/shared_experts");
  std::vector<float> shared_out(rows * H);
  shared.forward(x.data<float>(), rows, shared_out.data(), workspace);
  const float* w = weights.at(module + "/shared_expert_gate/kernel").data<float>();
  double worst = 0, gate_effect = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t h = 0; h < H; ++h) dot += static_cast<double>(w[h]) * x.data<float>()[r * H + h];
    const double g = 1 / (1 + std::exp(-dot));
    for (int64_t h = 0; h < H; ++h) {
      const int64_t k = r * H + h;
      // Routed part: the ungated output minus the shared expert.
      const double want = (without[k] - shared_out[k]) + g * shared_out[k];
      worst = std::max(worst, std::fabs(with_gate[k] - want));
      gate_effect =
          std::max(gate_effect, static_cast<double>(std::fabs(with_gate[k] - without[k])));
    }
  }
  std::cout << "shared-expert gate: max abs err = " << worst << std::endl;
  EXPECT_LE(worst, 1e-5);
  EXPECT_GT(gate_effect, 1e-2);
}

}  // namespace
}  // namespace kiln
