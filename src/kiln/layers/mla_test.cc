// Multi-head latent attention against the DeepSeek-V3 fixture: the expanded form (prefill)
// and the absorbed form (decode) both reproduce HF's self_attn output, agree with each
// other, and a token-by-token absorbed decode over the latent cache equals one expanded
// pass; the cache holds only the latent and the rotary key.
#include "kiln/layers/mla.h"

#include <gtest/gtest.h>

#include <iostream>

#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "test_util.h"

namespace kiln {
namespace {

class DeepseekMla : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = test::data_path("hf/deepseek_v3");
    loaded_ = load_model(dir);
    model_ = std::make_unique<Model>(loaded_.spec, loaded_.weights);
    reference_ =
        std::make_unique<SafetensorsFile>(SafetensorsFile::open(dir + "/reference.safetensors"));
  }
  Tensor act(int64_t layer, const std::string& suffix) const {
    return reference_->get("act.model.layers." + std::to_string(layer) + ".self_attn." + suffix)
        .contiguous();
  }
  // The layer's attention output for its reference input, in `form`, at positions [0, T).
  Tensor run(int64_t layer, MlaForm form) const {
    const Tensor in = act(layer, "in");  // [T, hidden]
    KvCache cache = model_->make_cache(1, in.dim(0));
    Tensor out = Tensor::zeros_like(in);
    Workspace workspace;
    model_->layer(layer).attention().mla().forward_in_form(
        form, in.data<float>(), 1, in.dim(0), 0, cache.layer(layer), out.mutable_data<float>(),
        workspace, nullptr);
    return out;
  }

  LoadedModel loaded_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<SafetensorsFile> reference_;
};

TEST_F(DeepseekMla, ExpandedAndAbsorbedFormsMatchTheReferenceAndEachOther) {
  for (int64_t i = 0; i < loaded_.spec.num_layers(); ++i) {
    const Tensor expanded = run(i, MlaForm::kExpanded);
    const Tensor absorbed = run(i, MlaForm::kAbsorbed);
    const double expanded_err = test::max_abs_diff(expanded, act(i, "out"));
    const double absorbed_err = test::max_abs_diff(absorbed, act(i, "out"));
    const double between = test::max_abs_diff(expanded, absorbed);
    std::cout << "deepseek_v3 layer " << i << " self_attn: expanded err " << expanded_err
              << ", absorbed err " << absorbed_err << ", expanded vs absorbed " << between
              << std::endl;
    EXPECT_LE(expanded_err, 1e-4);
    EXPECT_LE(absorbed_err, 1e-4);
    EXPECT_LE(between, 1e-5);
  }
}

// Prefill half the tokens (expanded), then decode the rest one at a time: single-token
// steps take the absorbed form and read the cached latents without expanding them.
TEST_F(DeepseekMla, AbsorbedDecodeOverLatentCacheEqualsExpandedPass) {
  const int64_t layer = 1;
  const Tensor in = act(layer, "in");  // [T, hidden]
  const int64_t T = in.dim(0), H = in.dim(1), prefill = T / 2;
  const Mla& mla = model_->layer(layer).attention().mla();
  KvCache cache = model_->make_cache(1, T);
  Tensor out = Tensor::zeros_like(in);  // [T, hidden]
  Workspace workspace;
  mla.forward(in.data<float>(), 1, prefill, 0, cache.layer(layer), out.mutable_data<float>(),
              workspace, nullptr);
  for (int64_t t = prefill; t < T; ++t)
    mla.forward(in.data<float>() + t * H, 1, 1, t, cache.layer(layer),
                out.mutable_data<float>() + t * H, workspace, nullptr);
  const double err = test::max_abs_diff(out, run(layer, MlaForm::kExpanded));
  std::cout << "deepseek_v3: prefill + absorbed decode vs one expanded pass: " << err << std::endl;
  EXPECT_LE(err, 1e-5);
  EXPECT_LE(test::max_abs_diff(out, act(layer, "out")), 1e-4);
}

TEST_F(DeepseekMla, CacheHoldsOnlyLatentAndRotaryKey) {
  const AttentionSpec& a = loaded_.spec.layers[0].attention;
  const int64_t per_layer = a.kv_lora_rank + a.qk_rope_head_dim;  // 16 + 8 values
  const int64_t expected = loaded_.spec.num_layers() * per_layer * 4;
  const KvCache cache = model_->make_cache(2, 7);
  std::cout << "deepseek_v3: KV cache " << cache.bytes_per_token() << " bytes per token"
            << std::endl;
  EXPECT_EQ(cache.bytes_per_token(), expected);
  EXPECT_EQ(loaded_.spec.kv_cache_bytes_per_token(), expected);
}

}  // namespace
}  // namespace kiln
