// The training model against the inference Model (logits), against PyTorch autograd
// (tests/data/train/<fixture>_grads.safetensors, written by tools/torch_reference.py from the
// tests/data/hf/<fixture> folders: every parameter's gradient, the loss, 10 AdamW losses), against
// finite differences on a small random model with every option it handles, and its refusals.
#include "kiln/train/train_model.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "hf_fixtures.h"
#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/io/safetensors_source.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/models/weight_names.h"
#include "kiln/train/adamw.h"
#include "kiln/train/backward.h"
#include "test_util.h"

namespace kiln::train {
namespace {

struct Batch {
  std::vector<int32_t> tokens;  // [B, T]
  int64_t batch = 0, T = 0;
};

Batch fixture_batch(const std::string& dir) {
  const Tensor ids = SafetensorsFile::open(dir + "/reference.safetensors").get("input_ids");
  Batch b;
  b.batch = ids.dim(0);
  b.T = ids.dim(1);
  for (int64_t i = 0; i < ids.numel(); ++i)
    b.tokens.push_back(static_cast<int32_t>(ids.item_as_double(i)));
  return b;
}

// The fixtures with a PyTorch gradient dump: every tests/data/train/<name>_grads.safetensors
// (tools/torch_reference.py) for the HF fixture tests/data/hf/<name>.
std::vector<std::string> dumped_fixtures() {
  std::vector<std::string> names;
  const std::string suffix = "_grads.safetensors";
  for (const auto& entry : std::filesystem::directory_iterator(test::data_path("train"))) {
    const std::string file = entry.path().filename().string();
    if (file.size() > suffix.size() &&
        file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0)
      names.push_back(file.substr(0, file.size() - suffix.size()));
  }
  std::sort(names.begin(), names.end());
  return names;
}

class TrainFixture : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return test::data_path("hf/" + GetParam()); }
  std::string grads_path() const {
    return test::data_path("train/" + GetParam() + "_grads.safetensors");
  }
};

TEST_P(TrainFixture, LogitsEqualTheInferenceModel) {
  const std::string fixture = dir();
  const LoadedModel loaded = load_model(fixture);
  const TrainModel train(loaded.spec, loaded.weights);
  const Model model(loaded.spec, loaded.weights);
  const Batch b = fixture_batch(fixture);
  KvCache cache = model.make_cache(b.batch, b.T);
  const Tensor expected = model.forward(b.tokens.data(), b.batch, b.T, cache);
  const Tensor actual = train.logits(b.tokens.data(), b.batch, b.T);
  const double err = test::max_abs_diff(actual, expected);
  const double ref_err = test::max_abs_diff(
      actual, SafetensorsFile::open(fixture + "/reference.safetensors").get("logits"));
  std::cout << GetParam() << ": training logits vs inference Model: max abs err = " << err
            << "; vs the fixture's (transformers) logits: " << ref_err << std::endl;
  EXPECT_LE(err, 1e-4);
  EXPECT_LE(ref_err, 1e-4);
}

// The dump's gradients in Kiln names and layouts: the family's own weight mapping applied to
// the HF-named gradients (a gradient transforms as its parameter does). Weights that are never
// trained (DeepSeek-V3's score correction bias, a buffer in transformers) have no gradient in
// the dump and are left out.
WeightMap reference_gradients(const LoadedModel& loaded, const std::string& path,
                              const ParameterMap& trained) {
  const SafetensorsSource source(path);
  std::vector<WeightMapping> mappings = loaded.family->map_weights(loaded.spec, source);
  std::erase_if(mappings, [&](const WeightMapping& m) { return !trained.count(m.kiln_name); });
  return apply_weight_mappings(mappings, source);
}

// Gradients are O(1e-2) here; a tensor whose largest PyTorch gradient is below this is zero.
constexpr double kZeroGradient = 1e-6;

TEST_P(TrainFixture, GradientsMatchPyTorchForEveryParameter) {
  const LoadedModel loaded = load_model(dir());
  TrainModel train(loaded.spec, loaded.weights);
  const Batch b = fixture_batch(dir());
  const std::vector<int32_t> targets = next_token_targets(b.tokens.data(), nullptr, b.batch, b.T);
  train.zero_gradients();
  const double loss = train.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T, 16);
  const SafetensorsFile dump = SafetensorsFile::open(grads_path());
  const double torch_loss = dump.get("loss").item_as_double(0);
  std::cout << std::setprecision(9) << GetParam() << ": loss kiln " << loss << ", torch "
            << torch_loss << ", diff " << std::abs(loss - torch_loss) << std::endl;
  EXPECT_NEAR(loss, torch_loss, 1e-5);

  const WeightMap expected = reference_gradients(loaded, grads_path(), train.gradients());
  ASSERT_EQ(expected.size(), train.gradients().size());
  double worst = 0.0;
  std::string worst_name;
  for (const auto& [name, grad] : train.gradients()) {
    ASSERT_TRUE(expected.count(name)) << name << " has no PyTorch gradient";
    const Tensor& ref = expected.at(name);
    ASSERT_EQ(ref.shape(), grad.shape()) << name;
    double max_ref = 0.0;
    for (int64_t i = 0; i < ref.numel(); ++i)
      max_ref = std::max(max_ref, std::abs(ref.item_as_double(i)));
    const double diff = test::max_abs_diff(grad, ref);
    if (max_ref < kZeroGradient) {
      // A gradient that is 0 in exact arithmetic (GPT-2's key bias: without RoPE, q . b_k shifts
      // every logit of a query alike, which the softmax ignores): both sides f32 rounding noise.
      std::cout << GetParam() << ": " << name << ": zero gradient (|torch| <= " << max_ref
                << ", |diff| = " << diff << ")" << std::endl;
      EXPECT_LE(diff, kZeroGradient) << name;
      continue;
    }
    const double rel = diff / max_ref;
    EXPECT_LE(rel, 1e-4) << name;
    if (rel > worst) worst = rel, worst_name = name;
  }
  std::cout << GetParam() << ": " << train.gradients().size()
            << " gradients vs PyTorch: worst max abs diff / max |grad| = " << worst << " ("
            << worst_name << ")" << std::endl;
}

TEST_P(TrainFixture, TenAdamWStepsGiveTheLossesOfPyTorch) {
  const LoadedModel loaded = load_model(dir());
  TrainModel train(loaded.spec, loaded.weights);
  const Batch b = fixture_batch(dir());
  const std::vector<int32_t> targets = next_token_targets(b.tokens.data(), nullptr, b.batch, b.T);
  const Tensor expected = SafetensorsFile::open(grads_path()).get("adamw_losses");
  ASSERT_EQ(expected.numel(), 10);
  AdamW optimizer({.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1});
  double worst = 0.0;
  for (int64_t step = 0; step < 10; ++step) {
    train.zero_gradients();
    const double loss = train.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T);
    const double ref = expected.item_as_double(step);
    std::cout << std::setprecision(9) << GetParam() << ": AdamW step " << step << ": loss kiln "
              << loss << ", torch " << ref << ", diff " << std::abs(loss - ref) << std::endl;
    EXPECT_NEAR(loss, ref, 1e-5) << "step " << step;
    worst = std::max(worst, std::abs(loss - ref));
    optimizer.step(train.parameters(), train.gradients());
  }
  std::cout << GetParam() << ": 10 AdamW steps: worst loss diff vs PyTorch = " << worst
            << std::endl;
}

INSTANTIATE_TEST_SUITE_P(Dumps, TrainFixture, ::testing::ValuesIn(dumped_fixtures()),
                         [](const auto& info) { return info.param; });

// Every HF fixture that check_trainable() accepts has a dump, and no refused one has.
TEST(TrainFixtures, EveryTrainableHfFixtureHasAPyTorchDump) {
  EXPECT_EQ(dumped_fixtures(), (std::vector<std::string>{"deepseek_v3",
                                                         "falcon",
                                                         "gemma",
                                                         "gemma2",
                                                         "gemma3_text",
                                                         "gpt2",
                                                         "gpt_neox",
                                                         "gpt_oss",
                                                         "llama",
                                                         "llama4_text",
                                                         "llama_rope_dynamic",
                                                         "llama_rope_linear",
                                                         "llama_rope_llama3",
                                                         "llama_rope_yarn",
                                                         "mistral",
                                                         "mixtral",
                                                         "olmo2",
                                                         "phi",
                                                         "phi3",
                                                         "qwen2",
                                                         "qwen3",
                                                         "qwen3_moe",
                                                         "starcoder2"}));
  for (const std::string& name : test::hf_fixture_names()) {
    if (!test::unsupported_reason(name).empty()) continue;
    const LoadedModel loaded = load_model(test::hf_fixture_path(name));
    bool trainable = true;
    try {
      check_trainable(loaded.spec);
    } catch (const Error&) {
      trainable = false;
    }
    const bool dumped =
        std::filesystem::exists(test::data_path("train/" + name + "_grads.safetensors"));
    EXPECT_EQ(trainable, dumped) << name
                                 << (trainable ? " trains but has no PyTorch dump"
                                               : " is refused but has a dump");
  }
}

// Every HF fixture either trains with logits equal to the inference Model's (and the
// fixture's), or is refused with an Error that names the feature.
TEST(TrainModel, EveryHfFixtureRunsExactlyOrIsRefusedByName) {
  int trainable = 0;
  for (const std::string& name : test::hf_fixture_names()) {
    if (!test::unsupported_reason(name).empty()) continue;
    const LoadedModel loaded = load_model(test::hf_fixture_path(name));
    try {
      check_trainable(loaded.spec);
    } catch (const Error& e) {
      std::cout << name << ": refused: " << e.what() << std::endl;
      EXPECT_NE(std::string(e.what()).find("not supported yet"), std::string::npos) << e.what();
      continue;
    }
    const TrainModel train(loaded.spec, loaded.weights);
    const Model model(loaded.spec, loaded.weights);
    const Batch b = fixture_batch(test::hf_fixture_path(name));
    KvCache cache = model.make_cache(b.batch, b.T);
    const Tensor logits = train.logits(b.tokens.data(), b.batch, b.T);
    const double err =
        test::max_abs_diff(logits, model.forward(b.tokens.data(), b.batch, b.T, cache));
    const double ref_err = test::max_abs_diff(
        logits, SafetensorsFile::open(test::hf_fixture_path(name) + "/reference.safetensors")
                    .get("logits"));
    std::cout << name << ": trainable; logits vs inference Model " << err << ", vs fixture "
              << ref_err << std::endl;
    EXPECT_LE(err, 1e-4) << name;
    EXPECT_LE(ref_err, 1e-4) << name;
    ++trainable;
  }
  EXPECT_GE(trainable, 18);
}

// A small model with every option TrainModel handles: tied embeddings with a scale, 1+w
// norms, q/k/v/o and MLP biases, GQA and MQA, a sliding window, interleaved partial RoPE and
// half-split RoPE, a custom softmax scale, GELU-tanh and SiLU gated MLPs.
ModelSpec all_options_spec() {
  ModelSpec spec;
  spec.family = "llama";
  spec.architecture = "TrainTestForCausalLM";
  spec.vocab_size = 37;
  spec.hidden_size = 16;
  spec.max_position_embeddings = 64;
  spec.tie_word_embeddings = true;
  spec.embedding_scale = 1.7f;
  spec.final_norm = {NormKind::kRmsOnePlus, 1e-5f};
  for (int i = 0; i < 2; ++i) {
    LayerSpec l;
    l.norm = {NormKind::kRmsOnePlus, 1e-5f};
    AttentionSpec& a = l.attention;
    a.num_heads = 4;
    a.num_kv_heads = i == 0 ? 2 : 1;
    a.head_dim = 6;
    a.q_bias = a.k_bias = a.v_bias = a.o_bias = true;
    a.sliding_window = i == 0 ? 3 : 0;
    a.scale = i == 1 ? 0.3f : 0.0f;
    a.rope.theta = 100.0;
    a.rope.interleaved = i == 0;
    a.rope.rotary_dim = i == 0 ? 4 : 0;
    l.mlp.intermediate = 24;
    l.mlp.activation = i == 0 ? Activation::kGeluTanh : Activation::kSilu;
    l.mlp.bias = i == 0;
    spec.layers.push_back(l);
  }
  return spec;
}

// A small model with the options of the other dense families, layer by layer: OLMo-2's post
// norms with a whole-projection QK norm, Gemma 2/3's sandwich norms (1+w) with a per-head QK
// norm, attention soft-capping and a sliding window, GPT-NeoX's parallel block with two
// LayerNorms and partial rotary, Phi/Falcon's parallel block with one shared norm; non-gated MLPs
// (GELU erf and tanh, ReLU^2) with biases; learned positions, an untied lm_head with a bias, a
// LayerNorm final norm and final logit soft-capping.
ModelSpec family_options_spec() {
  ModelSpec spec;
  spec.family = "llama";
  spec.architecture = "TrainFamiliesForCausalLM";
  spec.vocab_size = 41;
  spec.hidden_size = 16;
  spec.max_position_embeddings = 32;
  spec.learned_positions = true;
  spec.tie_word_embeddings = false;
  spec.lm_head_bias = true;
  spec.final_logit_softcap = 2.0f;
  spec.final_norm = {NormKind::kLayerNorm, 1e-5f};
  const NormPlacement placements[] = {NormPlacement::kPost, NormPlacement::kSandwich,
                                      NormPlacement::kParallel, NormPlacement::kParallel};
  const NormKind kinds[] = {NormKind::kRms, NormKind::kRmsOnePlus, NormKind::kLayerNorm,
                            NormKind::kLayerNormNoBias};
  for (int i = 0; i < 4; ++i) {
    LayerSpec l;
    l.placement = placements[i];
    l.parallel_shared_norm = i == 3;
    l.norm = {kinds[i], 1e-5f};
    AttentionSpec& a = l.attention;
    a.num_heads = 4;
    a.num_kv_heads = i == 1 ? 2 : (i == 3 ? 1 : 4);
    a.head_dim = 6;
    a.q_bias = a.k_bias = a.v_bias = a.o_bias = i >= 2;
    a.qk_norm =
        i == 0 ? QkNormKind::kWholeProjection : (i == 1 ? QkNormKind::kPerHead : QkNormKind::kNone);
    a.qk_norm_spec = {i == 1 ? NormKind::kRmsOnePlus : NormKind::kRms, 1e-6f};
    a.softcap = i <= 1 ? 1.5f : 0.0f;
    a.sliding_window = i == 1 ? 3 : 0;
    a.scale = i == 1 ? 0.4f : 0.0f;
    a.rope.theta = 100.0;
    a.rope.rotary_dim = i == 2 ? 4 : 0;
    l.mlp.intermediate = 20;
    l.mlp.activation = i == 0
                           ? Activation::kSilu
                           : (i == 1 ? Activation::kGeluExact
                                     : (i == 2 ? Activation::kGeluTanh : Activation::kReluSquared));
    l.mlp.gated = i == 0;
    l.mlp.bias = i >= 1;
    spec.layers.push_back(l);
  }
  return spec;
}

// Random weights for every parameter of `spec` (as TrainModel names them).
WeightMap random_weights(const ModelSpec& spec, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  WeightMap w;
  auto add = [&](const std::string& name, const Shape& shape, float scale, float offset = 0.0f) {
    std::vector<float> values(shape_numel(shape));
    for (float& v : values) v = offset + normal(rng) * scale;
    w[name] = Tensor::from_f32(shape, values);
  };
  auto norm = [&](const std::string& module, const NormSpec& n, int64_t dim) {
    // Scales near 1 for w norms, near 0 for 1+w ones; LayerNorm biases small.
    if (n.kind == NormKind::kNonParametric) return;
    add(names::scale(module), {dim}, 0.2f, n.kind == NormKind::kRmsOnePlus ? 0.0f : 1.0f);
    if (n.kind == NormKind::kLayerNorm) add(names::bias(module), {dim}, 0.1f);
  };
  const int64_t H = spec.hidden_size;
  add(names::embedding(names::token_embedder()), {spec.vocab_size, H}, 0.5f);
  if (spec.learned_positions)
    add(names::embedding(names::position_embedder()), {spec.max_position_embeddings, H}, 0.3f);
  for (int64_t i = 0; i < spec.num_layers(); ++i) {
    const LayerSpec& ls = spec.layers[i];
    const AttentionSpec& a = ls.attention;
    const NormPlacement p = ls.placement;
    const int64_t q = a.num_heads * a.head_dim, kv = a.num_kv_heads * a.head_dim;
    const int64_t inner = ls.mlp.intermediate;
    auto linear = [&](const std::string& module, int64_t in, int64_t out, bool bias) {
      add(names::kernel(module), {out, in}, 1.0f / std::sqrt(static_cast<float>(in)));
      if (bias) add(names::bias(module), {out}, 0.1f);
    };
    if (p != NormPlacement::kPost) norm(names::input_norm(i), ls.norm, H);
    const std::string attention = names::attention(i);
    linear(names::child(attention, "query"), H, q, a.q_bias);
    linear(names::child(attention, "key"), H, kv, a.k_bias);
    linear(names::child(attention, "value"), H, kv, a.v_bias);
    linear(names::child(attention, "out"), q, H, a.o_bias);
    if (a.qk_norm != QkNormKind::kNone) {
      const bool whole = a.qk_norm == QkNormKind::kWholeProjection;
      norm(names::child(attention, "query_norm"), a.qk_norm_spec, whole ? q : a.head_dim);
      norm(names::child(attention, "key_norm"), a.qk_norm_spec, whole ? kv : a.head_dim);
    }
    if (p == NormPlacement::kPost || p == NormPlacement::kSandwich)
      norm(names::post_attention_norm(i), ls.norm, H);
    if (p == NormPlacement::kSandwich) norm(names::pre_ffw_norm(i), ls.norm, H);
    if (p == NormPlacement::kPre || (p == NormPlacement::kParallel && !ls.parallel_shared_norm))
      norm(names::post_attention_norm(i), ls.norm, H);
    if (p == NormPlacement::kPost || p == NormPlacement::kSandwich)
      norm(names::post_ffw_norm(i), ls.norm, H);
    if (ls.mlp.gated) linear(names::mlp_gate(i), H, inner, ls.mlp.bias);
    linear(names::mlp_up(i), H, inner, ls.mlp.bias);
    linear(names::mlp_down(i), inner, H, ls.mlp.bias);
  }
  norm(names::final_norm(), spec.final_norm, H);
  if (!spec.tie_word_embeddings) {
    add(names::kernel(names::lm_head()), {spec.vocab_size, H}, 0.5f);
    if (spec.lm_head_bias) add(names::bias(names::lm_head()), {spec.vocab_size}, 0.1f);
  }
  return w;
}

// Logits against the inference Model, and the gradients of every parameter against central
// differences of the f32 loss on a few entries (the largest gradient and three random ones),
// relative to the tensor's largest gradient. f32 forward passes limit this to a wiring check (a
// wrong gradient is off by O(1)); the kernels are checked against f64 differences in
// backward_test.cc.
// With `kinks` (clamps in the forward, e.g. clip_qkv), an entry whose differences with steps h
// and h / 4 disagree (a clamp bound lies within h of the point: the loss is not smooth there)
// is skipped, and eight random entries are taken instead of three; at most a quarter may be
// skipped.
void check_wiring(const std::string& label, const ModelSpec& spec, uint32_t seed,
                  bool kinks = false) {
  std::mt19937 rng(seed);
  const WeightMap weights = random_weights(spec, rng);
  TrainModel train(spec, weights);
  const int64_t B = 2, T = 7;
  std::vector<int32_t> tokens(B * T);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % spec.vocab_size);
  std::vector<uint8_t> mask(B * T, 1);
  mask[3] = 0;  // one ignored target
  const std::vector<int32_t> targets = next_token_targets(tokens.data(), mask.data(), B, T);

  const Model model(spec, weights);
  KvCache cache = model.make_cache(B, T);
  const double logits_err = test::max_abs_diff(train.logits(tokens.data(), B, T),
                                               model.forward(tokens.data(), B, T, cache));
  std::cout << label << ": logits vs inference Model max abs err = " << logits_err << std::endl;
  EXPECT_LE(logits_err, 1e-4);

  train.zero_gradients();
  train.forward_backward(tokens.data(), targets.data(), B, T, 4);
  double worst = 0.0;
  std::string worst_name;
  int64_t checked = 0, skipped = 0;
  for (auto& [name, param] : train.parameters()) {
    const Tensor& grad = train.gradients().at(name);
    const float* g = grad.data<float>();
    float* p = param.mutable_data<float>();
    const int64_t n = param.numel();
    int64_t largest = 0;
    double max_grad = 0.0;
    for (int64_t i = 0; i < n; ++i)
      if (std::abs(g[i]) > max_grad) max_grad = std::abs(g[i]), largest = i;
    ASSERT_GT(max_grad, 0.0) << name;
    std::vector<int64_t> picks = {largest};
    for (int k = 0; k < (kinks ? 8 : 3); ++k) picks.push_back(static_cast<int64_t>(rng() % n));
    double max_diff = 0.0;
    const auto difference = [&](int64_t i, float h) {
      const float saved = p[i];
      p[i] = saved + h;
      const double plus = train.loss(tokens.data(), targets.data(), B, T);
      const float up = p[i];
      p[i] = saved - h;
      const double minus = train.loss(tokens.data(), targets.data(), B, T);
      const double numeric = (plus - minus) / (static_cast<double>(up) - p[i]);
      p[i] = saved;
      return numeric;
    };
    for (int64_t i : picks) {
      const double numeric = difference(i, 1e-2f);
      ++checked;
      if (kinks && std::abs(numeric - difference(i, 2.5e-3f)) > 2e-3 * max_grad) {
        ++skipped;
        continue;
      }
      max_diff = std::max(max_diff, std::abs(numeric - g[i]));
    }
    const double rel = max_diff / max_grad;
    EXPECT_LE(rel, 1e-2) << name;
    if (rel > worst) worst = rel, worst_name = name;
  }
  if (kinks) {
    std::cout << label << ": " << skipped << " of " << checked
              << " entries skipped (a clamp bound within the step)" << std::endl;
    EXPECT_LE(skipped * 4, checked);
  }
  std::cout << label << ": " << train.parameters().size()
            << " parameters vs f32 finite differences: worst rel err = " << worst << " ("
            << worst_name << ")" << std::endl;
}

TEST(TrainModel, EveryOptionMatchesInferenceAndFiniteDifferences) {
  check_wiring("all-options model", all_options_spec(), 11);
}

TEST(TrainModel, FamilyOptionsMatchInferenceAndFiniteDifferences) {
  check_wiring("family-options model", family_options_spec(), 13);
}

void expect_recomputation_is_bitwise_the_same(const ModelSpec& spec);

// Granite's residual and logit multipliers (residual_multiplier, 1 / logits_scaling) and OLMo /
// DBRX's clip_qkv: on the all-options model (pre norms) and the family-options one (post,
// sandwich and parallel blocks), against the inference Model and finite differences.
TEST(TrainModel, MultipliersAndClipQkvMatchInferenceAndFiniteDifferences) {
  ModelSpec pre = all_options_spec();
  pre.logit_scale = 0.25f;
  pre.layers[0].residual_scale = 0.375f;
  pre.layers[1].residual_scale = 1.5f;
  check_wiring("residual and logit multipliers (pre norms)", pre, 17);  // smooth: no skips
  pre.layers[0].attention.clip_qkv = 0.5f;
  pre.layers[1].attention.clip_qkv = 0.8f;
  check_wiring("multipliers + clip_qkv (pre norms)", pre, 17, true);
  ModelSpec family = family_options_spec();
  family.lm_head_bias = false;
  family.logit_scale = 0.5f;
  for (size_t i = 0; i < family.layers.size(); ++i) {
    family.layers[i].residual_scale = 0.5f + 0.25f * static_cast<float>(i);
    family.layers[i].attention.clip_qkv = i == 1 ? 0.0f : 0.7f;
  }
  check_wiring("multipliers + clip_qkv (post, sandwich, parallel)", family, 19, true);
  // The clamp is exercised: without it the logits differ.
  std::mt19937 rng(17);
  const WeightMap weights = random_weights(pre, rng);
  ModelSpec unclipped = pre;
  for (LayerSpec& l : unclipped.layers) l.attention.clip_qkv = 0.0f;
  const std::vector<int32_t> tokens = {1, 5, 9, 2, 7, 3, 8};
  const double effect =
      test::max_abs_diff(TrainModel(pre, weights).logits(tokens.data(), 1, 7),
                         TrainModel(unclipped, weights).logits(tokens.data(), 1, 7));
  std::cout << "clip_qkv changes the logits by up to " << effect << std::endl;
  EXPECT_GT(effect, 1e-2);
  expect_recomputation_is_bitwise_the_same(pre);
  expect_recomputation_is_bitwise_the_same(family);
}

void expect_recomputation_is_bitwise_the_same(const ModelSpec& spec) {
  std::mt19937 rng(14);
  const WeightMap weights = random_weights(spec, rng);
  const int64_t B = 2, T = 9;
  std::vector<int32_t> tokens(B * T);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % spec.vocab_size);
  const std::vector<int32_t> targets = next_token_targets(tokens.data(), nullptr, B, T);
  TrainModel kept(spec, weights), recomputed(spec, weights);
  recomputed.set_recompute(true);
  EXPECT_TRUE(recomputed.recompute());
  const double loss_kept = kept.forward_backward(tokens.data(), targets.data(), B, T);
  const double loss_recomputed = recomputed.forward_backward(tokens.data(), targets.data(), B, T);
  EXPECT_EQ(loss_kept, loss_recomputed);
  for (const auto& [name, g] : kept.gradients()) {
    const Tensor& other = recomputed.gradients().at(name);
    EXPECT_EQ(std::memcmp(g.raw(), other.raw(), g.nbytes()), 0) << name;
  }
}

// The MoE, latent-attention, sink and chunked-attention layers (DeepSeek-V3, gpt-oss, Llama 4,
// Mixtral, Qwen3-MoE) recompute bitwise, give the same gradients for any thread count,
// and attend per document when rows are packed.
TEST(TrainModel, MoeAndMlaRecomputeBitwiseAndPackDocuments) {
  for (const std::string name : {"deepseek_v3", "gpt_oss", "llama4_text", "mixtral", "qwen3_moe"}) {
    const LoadedModel loaded = load_model(test::hf_fixture_path(name));
    const Batch b = fixture_batch(test::hf_fixture_path(name));
    ASSERT_GE(b.batch, 2);
    const std::vector<int32_t> targets = next_token_targets(b.tokens.data(), nullptr, b.batch, b.T);
    TrainModel kept(loaded.spec, loaded.weights), recomputed(loaded.spec, loaded.weights);
    recomputed.set_recompute(true);
    const double loss = kept.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T);
    EXPECT_EQ(loss, recomputed.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T))
        << name;
    for (const auto& [param, g] : kept.gradients())
      EXPECT_EQ(std::memcmp(g.raw(), recomputed.gradients().at(param).raw(), g.nbytes()), 0)
          << name << " " << param;
    const int saved_threads = omp_get_max_threads();
    omp_set_num_threads(1);
    TrainModel one(loaded.spec, loaded.weights);
    EXPECT_EQ(loss, one.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T)) << name;
    omp_set_num_threads(saved_threads);
    for (const auto& [param, g] : kept.gradients())
      EXPECT_EQ(std::memcmp(g.raw(), one.gradients().at(param).raw(), g.nbytes()), 0)
          << name << " " << param << " differs with 1 thread";
    // The first two rows packed into one row of two documents: the same loss.
    std::vector<int32_t> segments(2 * b.T);
    for (int64_t t = 0; t < 2 * b.T; ++t) segments[t] = t < b.T ? 0 : 1;
    const double two_rows = kept.loss(b.tokens.data(), targets.data(), 2, b.T);
    const double packed =
        kept.loss(b.tokens.data(), targets.data(), 1, 2 * b.T, 256, segments.data());
    std::cout << name << ": loss of 2 rows " << two_rows << ", packed in one row " << packed
              << ", diff " << std::abs(two_rows - packed) << std::endl;
    EXPECT_NEAR(two_rows, packed, 1e-5) << name;
  }
}

TEST(TrainModel, RecomputationGivesBitwiseTheSameGradients) {
  for (const ModelSpec& spec : {all_options_spec(), family_options_spec()}) {
    SCOPED_TRACE(spec.architecture);
    expect_recomputation_is_bitwise_the_same(spec);
  }
}

// Large enough that every kernel runs its threaded path (GEMMs, attention blocks, norms).
void expect_bitwise_the_same_for_any_thread_count(ModelSpec spec) {
  spec.vocab_size = 300;
  spec.hidden_size = 64;
  spec.max_position_embeddings = 128;
  for (LayerSpec& l : spec.layers) {
    l.attention.head_dim = 16;
    l.attention.sliding_window = 0;
    l.mlp.intermediate = 160;
  }
  spec.layers[0].attention.sliding_window = 40;
  std::mt19937 rng(12);
  const WeightMap weights = random_weights(spec, rng);
  const int64_t B = 3, T = 90;
  std::vector<int32_t> tokens(B * T);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % spec.vocab_size);
  const std::vector<int32_t> targets = next_token_targets(tokens.data(), nullptr, B, T);
  const int saved_threads = omp_get_max_threads();
  std::vector<double> losses;
  std::vector<ParameterMap> gradients;
  for (const int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    TrainModel train(spec, weights);
    losses.push_back(train.forward_backward(tokens.data(), targets.data(), B, T));
    gradients.push_back(train.gradients());
  }
  omp_set_num_threads(saved_threads);
  for (size_t run = 1; run < losses.size(); ++run) {
    EXPECT_EQ(losses[run], losses[0]) << "threads " << run + 1;
    for (const auto& [name, g] : gradients[0]) {
      const Tensor& other = gradients[run].at(name);
      EXPECT_EQ(std::memcmp(g.raw(), other.raw(), g.nbytes()), 0)
          << name << " differs between 1 and " << run + 1 << " threads";
    }
  }
  std::cout << "loss with 1, 2 and 3 threads: " << std::setprecision(17) << losses[0] << ", "
            << losses[1] << ", " << losses[2] << std::endl;
}

TEST(TrainModel, GradientsAreBitwiseTheSameForAnyThreadCount) {
  for (const ModelSpec& spec : {all_options_spec(), family_options_spec()}) {
    SCOPED_TRACE(spec.architecture);
    expect_bitwise_the_same_for_any_thread_count(spec);
  }
}

void expect_refused(const std::function<void(ModelSpec&)>& edit, const std::string& feature) {
  ModelSpec spec = all_options_spec();
  edit(spec);
  try {
    check_trainable(spec);
    ADD_FAILURE() << "accepted a spec with " << feature;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(feature), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not supported"), std::string::npos) << e.what();
  }
}

TEST(TrainModel, RefusesSpecFeaturesItDoesNotHandleByName) {
  expect_refused([](ModelSpec& s) { s.layers[1].norm.kind = NormKind::kNone; },
                 "layer 1: norm kind 'none'");
  expect_refused(
      [](ModelSpec& s) {
        s.layers[0].attention.qk_norm = QkNormKind::kPerHead;
        s.layers[0].attention.qk_norm_spec.kind = NormKind::kLayerNorm;
      },
      "QK norm kind 'layer_norm'");
  // Layer 1 with latent attention (MLA).
  const auto mla = [](ModelSpec& s) -> AttentionSpec& {
    AttentionSpec& a = s.layers[1].attention;
    a.kv_lora_rank = 8;
    a.qk_nope_head_dim = 4;
    a.qk_rope_head_dim = 2;
    a.value_head_dim = 4;
    return a;
  };
  expect_refused([&](ModelSpec& s) { mla(s).clip_qkv = 8.0f; },
                 "layer 1: clip_qkv with latent attention");
  auto moe = [](ModelSpec& s) {
    s.layers[0].moe.num_experts = 4;
    s.layers[0].moe.top_k = 2;
    s.layers[0].moe.expert_intermediate = 8;
  };
  expect_refused(
      [&](ModelSpec& s) {
        moe(s);
        s.layers[0].moe.router = RouterKind::kSparseMixer;
      },
      "layer 0: MoE router 'sparsemixer'");
  expect_refused([&](ModelSpec& s) { mla(s).sliding_window = 5; },
                 "layer 1: a sliding window with latent attention");
  expect_refused(
      [&](ModelSpec& s) {
        AttentionSpec& a = mla(s);
        a.sliding_window = 0;
        a.softcap = 30.0f;
      },
      "layer 1: attention logit soft-capping with latent attention");
  expect_refused(
      [](ModelSpec& s) {
        s.layers[0].attention.sinks = true;
        s.layers[0].attention.softcap = 50.0f;
      },
      "attention sinks or chunked attention with logit soft-capping");
  expect_refused([](ModelSpec& s) { s.layers[0].mlp.activation = Activation::kRelu; },
                 "gated MLP activation 'relu'");
  expect_refused([](ModelSpec& s) { s.layers[0].mlp.swiglu_limit = 7.0f; }, "clamped SwiGLU");
  expect_refused([](ModelSpec& s) { s.has_final_norm = false; }, "a model without a final norm");
  expect_refused(
      [](ModelSpec& s) {
        s.logit_scale = 0.5f;
        s.lm_head_bias = true;
      },
      "a logit scale with an lm_head bias");
  // The constructor refuses before reading any weight.
  ModelSpec spec = all_options_spec();
  spec.layers[1].norm.kind = NormKind::kNone;
  try {
    TrainModel model(spec, WeightMap{});
    ADD_FAILURE() << "built a model with norm kind 'none'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model 'TrainTestForCausalLM' layer 1: norm kind 'none'"),
              std::string::npos)
        << e.what();
  }
}

TEST(TrainModel, RejectsTokensAndTargetsOutsideTheVocabulary) {
  std::mt19937 rng(12);
  const ModelSpec spec = all_options_spec();
  TrainModel train(spec, random_weights(spec, rng));
  std::vector<int32_t> tokens = {1, 2, 3}, targets = {2, 3, kIgnoreTarget};
  tokens[1] = 37;
  EXPECT_THROW(train.forward_backward(tokens.data(), targets.data(), 1, 3), Error);
  tokens[1] = 2;
  targets[0] = -5;
  EXPECT_THROW(train.forward_backward(tokens.data(), targets.data(), 1, 3), Error);
}

TEST(AdamW, DecoupledDecayBiasCorrectionNoDecayRuleAndClipping) {
  ParameterMap params, grads;
  params["m/kernel"] = Tensor::from_f32({1, 2}, {1.0f, -2.0f});
  params["n/scale"] = Tensor::from_f32({2}, {0.5f, 0.25f});
  params["token_embedder/embedding"] = Tensor::from_f32({2, 1}, {3.0f, 4.0f});
  grads["m/kernel"] = Tensor::from_f32({1, 2}, {3.0f, 0.0f});
  grads["n/scale"] = Tensor::from_f32({2}, {0.0f, 4.0f});
  grads["token_embedder/embedding"] = Tensor::from_f32({2, 1}, {0.0f, 0.0f});
  EXPECT_TRUE(decays("m/kernel", params["m/kernel"]));
  EXPECT_FALSE(decays("n/scale", params["n/scale"]));
  EXPECT_FALSE(decays("token_embedder/embedding", params["token_embedder/embedding"]));

  const double lr = 0.1, wd = 0.5, clip = 2.5;
  AdamW adamw(
      {.lr = lr, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = wd, .clip_norm = clip});
  EXPECT_NEAR(adamw.step(params, grads), 5.0, 1e-12);  // sqrt(3^2 + 4^2)
  // Clipped to norm 2.5: g *= 0.5 (up to the 1e-6 guard). Step 1: m = 0.1 g, v = 0.05 g^2,
  // update = lr * (m / 0.1) / (sqrt(v / 0.05) + eps) = lr * sign(g) for g != 0.
  auto expect = [&](const std::string& name, int64_t i, double value) {
    EXPECT_NEAR(params[name].data<float>()[i], value, 1e-6) << name << "[" << i << "]";
  };
  expect("m/kernel", 0, 1.0 * (1 - lr * wd) - lr);
  expect("m/kernel", 1, -2.0 * (1 - lr * wd));  // zero gradient: decay only
  expect("n/scale", 0, 0.5);
  expect("n/scale", 1, 0.25 - lr);
  expect("token_embedder/embedding", 0, 3.0);  // no decay for embeddings
  // Step 2 with the same gradients: m = (1 - b1^2) g', v = (1 - b2^2) g'^2 (g' = g / 2), so the
  // bias-corrected m / sqrt(v) is sign(g) again.
  adamw.step(params, grads);
  expect("n/scale", 1, 0.25 - 2 * lr);
  expect("m/kernel", 0, (1.0 * (1 - lr * wd) - lr) * (1 - lr * wd) - lr);
  EXPECT_EQ(adamw.steps(), 2);
  grads.erase("n/scale");
  EXPECT_THROW(adamw.step(params, grads), Error);
}

}  // namespace
}  // namespace kiln::train
