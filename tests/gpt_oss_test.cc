// The gpt_oss fixture needs every gpt-oss option: the model built from its spec matches the
// reference, and the same weights with any one option switched off (or set the way another
// family would) miss it by far more than the tolerance. This proves that the fixture
// exercises each option, so that the conformance tests guard them. One part it cannot prove:
// no gate or up value of the fixture reaches the limit 7 (no clamping at all gives the same
// logits), so the clamp itself is guarded by the formula tests (ops/activation_test.cc,
// layers/moe_test.cc) and by the limit-1 case below.
#include <gtest/gtest.h>

#include <functional>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "hf_fixtures.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/verify/reference_check.h"

namespace kiln {
namespace {

double logits_error(const LoadedModel& loaded, const ModelSpec& spec) {
  const Model model(spec, loaded.weights);
  const std::string reference = test::hf_fixture_path("gpt_oss") + "/reference.safetensors";
  return check_against_reference(model, reference, 1e-4).logits_max_abs_err;
}

TEST(GptOssFixture, EveryOptionIsNeededToMatchTheReference) {
  KILN_SKIP_UNSUPPORTED_FIXTURE("gpt_oss");
  const LoadedModel loaded = load_model(test::hf_fixture_path("gpt_oss"));
  const double exact = logits_error(loaded, loaded.spec);
  std::cout << "gpt_oss as built: logits max abs err " << exact << std::endl;
  EXPECT_LE(exact, 1e-4);

  using Change = std::function<void(LayerSpec&)>;
  const std::vector<std::pair<std::string, Change>> changes = {
      {"without attention sinks", [](LayerSpec& l) { l.attention.sinks = false; }},
      {"without sliding windows",
       [](LayerSpec& l) {
         l.kind = LayerKind::kFullAttention;
         l.attention.sliding_window = 0;
       }},
      {"with YaRN's truncated correction range",
       [](LayerSpec& l) { l.attention.rope.truncate = true; }},
      {"without the router bias", [](LayerSpec& l) { l.moe.router_bias = false; }},
      {"without expert biases", [](LayerSpec& l) { l.moe.expert_bias = false; }},
      {"with plain SwiGLU instead of the clamped one",
       [](LayerSpec& l) { l.moe.swiglu_limit = 0.0f; }},
      {"with the SwiGLU clamped at 1 instead of 7",
       [](LayerSpec& l) { l.moe.swiglu_limit = 1.0f; }},
      {"with softmax-then-top-k routing",
       [](LayerSpec& l) { l.moe.router = RouterKind::kSoftmaxTopK; }},
  };
  for (const auto& [what, change] : changes) {
    ModelSpec spec = loaded.spec;
    for (LayerSpec& layer : spec.layers) change(layer);
    const double err = logits_error(loaded, spec);
    std::cout << "gpt_oss " << what << ": logits max abs err " << err << std::endl;
    EXPECT_GT(err, 1e-2) << what;
  }
}

}  // namespace
}  // namespace kiln
