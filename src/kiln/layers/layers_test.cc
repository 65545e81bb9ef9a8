// Layer-level tests against the HF fixtures: each module of each decoder layer is fed the
// reference's `act.<module>.in` (batch row 0, 20 tokens) and must give `act.<module>.out`.
#include <gtest/gtest.h>

#include <iostream>

#include "hf_fixtures.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"

namespace kiln {
namespace {

constexpr double kTolerance = 1e-4;

class FixtureLayers : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
    const std::string dir = test::hf_fixture_path(GetParam());
    loaded_ = load_model(dir);
    modules_ = family_for(loaded_.config).hf_modules(loaded_.spec);
    model_ = std::make_unique<Model>(loaded_.spec, loaded_.weights);
    reference_ =
        std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir + "/reference.safetensors"));
    if (!has_act(0, "", "in"))
      GTEST_SKIP() << GetParam() << " names its HF modules otherwise than " << modules_.layers
                   << ".<i>; the conformance test covers it";
  }
  // act.<layers>.<layer>[.<module>].<suffix>, with the family's HF module names.
  std::string act_name(int64_t layer, const std::string& module, const std::string& suffix) const {
    return "act." + modules_.layers + "." + std::to_string(layer) +
           (module.empty() ? "" : "." + module) + "." + suffix;
  }
  bool has_act(int64_t layer, const std::string& module, const std::string& suffix) const {
    return reference_->contains(act_name(layer, module, suffix));
  }
  Tensor act(int64_t layer, const std::string& module, const std::string& suffix) const {
    return reference_->get(act_name(layer, module, suffix)).contiguous();
  }
  void expect_close(const Tensor& actual, const Tensor& expected, const std::string& what) {
    const double err = test::max_abs_diff(actual, expected);
    std::cout << GetParam() << ": " << what << " max abs err = " << err << std::endl;
    EXPECT_LE(err, kTolerance) << what;
  }

  LoadedModel loaded_;
  HfModuleNames modules_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<SafetensorsFile> reference_;
};

// The norms the fixture captured under the family's names (OLMo-2 has no input_layernorm;
// its post_attention_layernorm follows the attention, as Gemma 2's does).
TEST_P(FixtureLayers, Norms) {
  int compared = 0;
  for (int64_t i = 0; i < loaded_.spec.num_layers(); ++i) {
    const DecoderLayer& layer = model_->layer(i);
    for (const auto& [module, norm] :
         {std::pair<std::string, const Norm*>{modules_.input_norm, &layer.input_norm()},
          {modules_.post_attention_norm, &layer.post_attention_norm()}}) {
      // Skip norms the family lacks and those the reference did not capture (GPT-2's).
      if (module.empty() || !has_act(i, module, "in")) continue;
      const Tensor in = act(i, module, "in");  // [T, hidden]
      Tensor out = Tensor::zeros_like(in);
      norm->forward(in.data<float>(), in.dim(0), out.mutable_data<float>());
      expect_close(out, act(i, module, "out"), "layer " + std::to_string(i) + " " + module);
      ++compared;
    }
  }
  if (compared == 0) GTEST_SKIP() << "the reference holds no norm activations";
}

TEST_P(FixtureLayers, QkNorms) {
  if (loaded_.spec.layers[0].attention.qk_norm != QkNormKind::kPerHead)
    GTEST_SKIP() << "no per-head QK norm in " << GetParam();
  for (int64_t i = 0; i < loaded_.spec.num_layers(); ++i) {
    const Attention& attention = model_->layer(i).attention();
    for (const auto& [module, norm] : {std::pair<std::string, const Norm*>{
                                           modules_.attention + ".q_norm", &attention.query_norm()},
                                       {modules_.attention + ".k_norm", &attention.key_norm()}}) {
      const Tensor in = act(i, module, "in");  // [T, heads, head_dim]
      Tensor out = Tensor::zeros_like(in);
      norm->forward(in.data<float>(), in.dim(0) * in.dim(1), out.mutable_data<float>());
      expect_close(out, act(i, module, "out"), "layer " + std::to_string(i) + " " + module);
    }
  }
}

TEST_P(FixtureLayers, SelfAttentionAtPositionsZeroToT) {
  for (int64_t i = 0; i < loaded_.spec.num_layers(); ++i) {
    const Tensor in = act(i, modules_.attention, "in");  // [T, hidden]
    const int64_t tokens = in.dim(0);
    KvCache cache = model_->make_cache(1, tokens);
    Tensor out = Tensor::zeros_like(in);
    Workspace workspace;
    model_->layer(i).attention().forward(in.data<float>(), 1, tokens, 0, cache.layer(i),
                                         out.mutable_data<float>(), workspace, nullptr);
    expect_close(out, act(i, modules_.attention, "out"),
                 "layer " + std::to_string(i) + " " + modules_.attention);
  }
}

TEST_P(FixtureLayers, Mlp) {
  for (int64_t i = 0; i < loaded_.spec.num_layers(); ++i) {
    const Tensor in = act(i, modules_.mlp, "in");  // [T, hidden]
    Tensor out = Tensor::zeros_like(in);
    float* out_data = out.mutable_data<float>();
    Workspace workspace;
    model_->layer(i).mlp().forward(in.data<float>(), in.dim(0), out_data, workspace);
    if (modules_.mlp_out_includes_attention) {
      const Tensor attention = act(i, modules_.attention, "out");  // [T, hidden]
      for (int64_t j = 0; j < out.numel(); ++j) out_data[j] += attention.data<float>()[j];
    }
    // A block that flattens its tokens (Llama 4's MoE) left only the first token's output.
    const Tensor expected = act(i, modules_.mlp, "out");
    expect_close(expected.ndim() == 1 ? out.select(0, 0).contiguous() : out, expected,
                 "layer " + std::to_string(i) + " " + modules_.mlp);
  }
}

TEST_P(FixtureLayers, WholeDecoderLayer) {
  for (int64_t i = 0; i < loaded_.spec.num_layers(); ++i) {
    Tensor x = act(i, "", "in").contiguous(true);  // [T, hidden], updated in place
    KvCache cache = model_->make_cache(1, x.dim(0));
    Workspace workspace;
    model_->layer(i).forward(x.mutable_data<float>(), 1, x.dim(0), 0, cache.layer(i), workspace,
                             nullptr);
    expect_close(x, act(i, "", "out"), "layer " + std::to_string(i));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureLayers, ::testing::ValuesIn(test::hf_fixture_names()),
                         test::FixtureName());

}  // namespace
}  // namespace kiln
