// LoRA on TrainModel: adapter gradients against PyTorch autograd
// (tests/data/train/llama_lora.safetensors, tools/torch_reference.py --lora-rank 4), merged
// weights against the adapted training forward, dropout against finite differences, the
// PEFT files' round trip and the errors of bad adapters.
#include "kiln/train/lora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/models/weight_names.h"
#include "kiln/train/backward.h"
#include "test_util.h"

namespace kiln::train {
namespace {
namespace fs = std::filesystem;

struct Batch {
  std::vector<int32_t> tokens;  // [B, T]
  int64_t batch = 0, T = 0;
};

Batch fixture_batch(const std::string& dir) {
  const Tensor ids = SafetensorsFile::open(dir + "/reference.safetensors").get("input_ids");
  Batch b{{}, ids.dim(0), ids.dim(1)};
  for (int64_t i = 0; i < ids.numel(); ++i)
    b.tokens.push_back(static_cast<int32_t>(ids.item_as_double(i)));
  return b;
}

const LoraOptions kAllTargets{4, 8.0, 0.0, {"q", "k", "v", "o", "gate", "up", "down"}, 0};

// The PEFT name of a Kiln module's A or B in the dump.
std::string peft_name(const std::map<std::string, std::string>& hf, const std::string& module,
                      bool a) {
  const std::string w = hf.at(names::kernel(module));
  return "base_model.model." + w.substr(0, w.size() - 7) +
         (a ? ".lora_A.weight" : ".lora_B.weight");
}

// Sets the adapters of `lora` to the dump's values.
void set_from_dump(const Lora& lora, const std::map<std::string, std::string>& hf,
                   const SafetensorsFile& dump) {
  for (auto [module, ab] : lora.adapters()) {
    for (bool a : {true, false}) {
      Tensor& t = a ? ab.first : ab.second;
      const Tensor ref = dump.get(peft_name(hf, module, a));
      ASSERT_EQ(ref.shape(), t.shape()) << module;
      std::memcpy(t.mutable_raw(), ref.raw(), t.nbytes());
    }
  }
}

TEST(Lora, GradientsMatchPyTorchAutograd) {
  const std::string dir = test::data_path("hf/llama");
  const LoadedModel loaded = load_model(dir);
  TrainModel model(loaded.spec, loaded.weights, /*freeze_base=*/true);
  Lora lora(model, kAllTargets);
  const auto hf = hf_export_names(loaded);
  const SafetensorsFile dump =
      SafetensorsFile::open(test::data_path("train/llama_lora.safetensors"));
  set_from_dump(lora, hf, dump);
  // Only the adapters train: 2 per module, 7 modules per layer.
  EXPECT_EQ(model.parameters().size(), static_cast<size_t>(2 * 7 * loaded.spec.num_layers()));
  EXPECT_EQ(model.gradients().size(), model.parameters().size());
  EXPECT_FALSE(model.frozen_parameters().empty());

  const Batch b = fixture_batch(dir);
  const std::vector<int32_t> targets = next_token_targets(b.tokens.data(), nullptr, b.batch, b.T);
  model.zero_gradients();
  const double loss = model.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T, 16);
  const double torch_loss = dump.get("loss").item_as_double(0);
  std::cout << "lora loss: kiln " << loss << ", torch " << torch_loss << ", diff "
            << std::abs(loss - torch_loss) << std::endl;
  EXPECT_NEAR(loss, torch_loss, 1e-5);
  double worst = 0.0;
  std::string worst_name;
  for (const auto& [module, ab] : lora.adapters()) {
    for (bool a : {true, false}) {
      const Tensor& grad = model.gradients().at(module + (a ? "/lora_a" : "/lora_b"));
      const Tensor ref = dump.get("grad." + peft_name(hf, module, a));
      ASSERT_EQ(ref.shape(), grad.shape());
      double max_ref = 0.0;
      for (int64_t i = 0; i < ref.numel(); ++i)
        max_ref = std::max(max_ref, std::abs(ref.item_as_double(i)));
      ASSERT_GT(max_ref, 0.0) << module;
      const double rel = test::max_abs_diff(grad, ref) / max_ref;
      EXPECT_LE(rel, 1e-4) << module << (a ? " A" : " B");
      if (rel > worst) worst = rel, worst_name = module + (a ? "/lora_a" : "/lora_b");
    }
  }
  std::cout << "lora: " << 2 * lora.adapters().size()
            << " adapter gradients vs PyTorch: worst max abs diff / max |grad| = " << worst << " ("
            << worst_name << ")" << std::endl;
}

TEST(Lora, StartsAtTheBaseModelAndSeedsItsInit) {
  const LoadedModel loaded = load_model(test::data_path("hf/llama"));
  TrainModel plain(loaded.spec, loaded.weights);
  TrainModel adapted(loaded.spec, loaded.weights, true);
  Lora lora(adapted, {8, 16.0, 0.1, {"q", "v", "down"}, 7});
  const Batch b = fixture_batch(test::data_path("hf/llama"));
  EXPECT_EQ(test::max_abs_diff(plain.logits(b.tokens.data(), b.batch, b.T),
                               adapted.logits(b.tokens.data(), b.batch, b.T)),
            0.0);  // B = 0
  TrainModel again(loaded.spec, loaded.weights, true);
  Lora same(again, {8, 16.0, 0.1, {"q", "v", "down"}, 7});
  for (const auto& [module, ab] : lora.adapters()) {
    const Tensor& a = ab.first;
    EXPECT_EQ(test::max_abs_diff(a, same.adapters().at(module).first), 0.0);
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.dim(1)));
    double max_abs = 0.0;
    for (int64_t i = 0; i < a.numel(); ++i)
      max_abs = std::max(max_abs, std::abs(a.item_as_double(i)));
    EXPECT_LE(max_abs, bound);
    EXPECT_GT(max_abs, 0.9 * bound);
  }
}

// With dropout, the gradient is that of the loss with the key's fixed masks (central
// differences in f32 on a few adapter elements), the same key gives the same loss and another
// key another one.
TEST(Lora, DropoutIsSeededAndDifferentiated) {
  const std::string dir = test::data_path("hf/llama");
  const LoadedModel loaded = load_model(dir);
  TrainModel model(loaded.spec, loaded.weights, true);
  Lora lora(model, {4, 8.0, 0.3, {"q", "k", "v", "o", "gate", "up", "down"}, 3});
  set_from_dump(lora, hf_export_names(loaded),
                SafetensorsFile::open(test::data_path("train/llama_lora.safetensors")));
  const Batch b = fixture_batch(dir);
  const std::vector<int32_t> targets = next_token_targets(b.tokens.data(), nullptr, b.batch, b.T);
  auto run = [&](uint64_t key) {
    lora.set_dropout_key(key);
    model.zero_gradients();
    return model.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T);
  };
  const double l5 = run(5), l6 = run(6), l5_again = run(5);
  EXPECT_EQ(l5, l5_again);
  EXPECT_NE(l5, l6);
  const double no_dropout = model.loss(b.tokens.data(), targets.data(), b.batch, b.T);
  EXPECT_NE(no_dropout, l5);
  ParameterMap grads;
  for (const auto& [name, g] : model.gradients()) grads[name] = g.contiguous(true);
  double worst = 0.0;
  for (const std::string name :
       {"decoder/layers_0/self_attention/query/lora_a", "decoder/layers_1/mlp/wo/lora_b",
        "decoder/layers_0/mlp/wi_0/lora_a"}) {
    Tensor p = model.parameters().at(name);
    float* data = p.mutable_data<float>();
    const double max_grad = [&] {
      double m = 0;
      for (int64_t i = 0; i < grads[name].numel(); ++i)
        m = std::max(m, std::abs(grads[name].item_as_double(i)));
      return m;
    }();
    for (int64_t i : {int64_t{0}, p.numel() / 3, p.numel() - 1}) {
      const float saved = data[i];
      const float h = 1e-2f;
      data[i] = saved + h;
      const double up = run(5);
      data[i] = saved - h;
      const double down = run(5);
      data[i] = saved;
      const double numeric = (up - down) / (2.0 * h);
      const double err = std::abs(numeric - grads[name].item_as_double(i)) / max_grad;
      worst = std::max(worst, err);
      EXPECT_LE(err, 2e-2) << name << "[" << i << "]";
    }
  }
  std::cout << "lora dropout 0.3: analytic vs central differences, worst |diff| / max |grad| = "
            << worst << std::endl;
}

// save_lora -> load_lora -> merge_lora gives the weights whose inference logits are the
// adapted training forward's.
TEST(Lora, MergedWeightsGiveTheAdaptedLogits) {
  const std::string dir = test::data_path("hf/llama");
  const LoadedModel loaded = load_model(dir);
  TrainModel model(loaded.spec, loaded.weights, true);
  Lora lora(model, kAllTargets);
  const auto hf = hf_export_names(loaded);
  set_from_dump(lora, hf, SafetensorsFile::open(test::data_path("train/llama_lora.safetensors")));
  const std::string out = test::make_temp_dir("kiln_lora_");
  save_lora(out, lora, hf, dir);
  for (const char* f :
       {"adapter_model.safetensors", "adapter_config.json", "kiln_adapter.safetensors"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  const SafetensorsFile kiln_file = SafetensorsFile::open(out + "/kiln_adapter.safetensors");
  EXPECT_EQ(kiln_file.metadata().at("lora_rank"), "4");
  EXPECT_TRUE(kiln_file.contains("decoder/layers_0/self_attention/query/lora_a"));
  EXPECT_TRUE(SafetensorsFile::open(out + "/adapter_model.safetensors")
                  .contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));

  LoadedModel merged = load_model(dir);
  const LoraWeights weights = load_lora(out, merged);
  EXPECT_EQ(weights.modules.size(), 7u * static_cast<size_t>(loaded.spec.num_layers()));
  EXPECT_DOUBLE_EQ(weights.scale, 2.0);
  merge_lora(merged.weights, weights);
  const Model inference(merged.spec, merged.weights);
  const Batch b = fixture_batch(dir);
  KvCache cache = inference.make_cache(b.batch, b.T);
  const Tensor merged_logits = inference.forward(b.tokens.data(), b.batch, b.T, cache);
  const Tensor adapted = model.logits(b.tokens.data(), b.batch, b.T);
  const Tensor base = TrainModel(loaded.spec, loaded.weights).logits(b.tokens.data(), b.batch, b.T);
  const double err = test::max_abs_diff(merged_logits, adapted);
  const double moved = test::max_abs_diff(base, adapted);
  std::cout << "merged model vs adapted training forward: max abs logit diff " << err
            << " (the adapters move the logits by " << moved << ")" << std::endl;
  EXPECT_LE(err, 1e-4);
  EXPECT_GT(moved, 1e-2);
  fs::remove_all(out);
}

// --recompute with adapters (dropout on) and packed rows: the second forward of each layer
// runs the adapters again with the same masks and the per-document attention and positions,
// so the loss and every adapter gradient are bitwise those of the run that keeps everything.
TEST(Lora, RecomputationWithDropoutAndPackingIsBitwiseTheSame) {
  const std::string dir = test::data_path("hf/llama");
  const LoadedModel loaded = load_model(dir);
  const Batch b = fixture_batch(dir);
  std::vector<int32_t> targets = next_token_targets(b.tokens.data(), nullptr, b.batch, b.T);
  std::vector<int32_t> segments(b.tokens.size());  // two documents per row
  for (int64_t r = 0; r < b.batch; ++r)
    for (int64_t t = 0; t < b.T; ++t) segments[r * b.T + t] = t < b.T / 2 ? 0 : 1;
  for (int64_t r = 0; r < b.batch; ++r) targets[r * b.T + b.T / 2 - 1] = kIgnoreTarget;
  const auto dump = SafetensorsFile::open(test::data_path("train/llama_lora.safetensors"));
  double losses[2] = {0.0, 0.0};
  ParameterMap grads[2];
  for (int recompute = 0; recompute < 2; ++recompute) {
    TrainModel model(loaded.spec, loaded.weights, true);
    Lora lora(model, {4, 8.0, 0.3, {"q", "k", "v", "o", "gate", "up", "down"}, 3});
    set_from_dump(lora, hf_export_names(loaded), dump);
    model.set_recompute(recompute == 1);
    lora.set_dropout_key(9);
    losses[recompute] =
        model.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T, 256, segments.data());
    for (const auto& [name, g] : model.gradients()) grads[recompute][name] = g.contiguous(true);
  }
  std::cout << "LoRA + dropout + packing: loss " << losses[0] << " kept, " << losses[1]
            << " recomputed; " << grads[0].size() << " adapter gradients" << std::endl;
  EXPECT_EQ(losses[0], losses[1]);
  ASSERT_EQ(grads[0].size(), 28u);
  for (const auto& [name, g] : grads[0]) {
    const Tensor& other = grads[1].at(name);
    ASSERT_EQ(g.nbytes(), other.nbytes()) << name;
    EXPECT_EQ(std::memcmp(g.raw(), other.raw(), g.nbytes()), 0) << name;
  }
}

TEST(Lora, BadOptionsAndAdaptersAreClearErrors) {
  EXPECT_THROW(parse_lora_targets("q,attn"), Error);
  EXPECT_THROW(parse_lora_targets("q,q"), Error);
  EXPECT_EQ(parse_lora_targets("gate,up,down").size(), 3u);
  const std::string dir = test::data_path("hf/llama");
  const LoadedModel loaded = load_model(dir);
  TrainModel model(loaded.spec, loaded.weights, true);
  EXPECT_THROW(Lora(model, {0, 8.0, 0.0, {"q"}, 0}), Error);
  EXPECT_THROW(Lora(model, {4, 8.0, 1.0, {"q"}, 0}), Error);
  {  // a model without gate projections (GPT-2's non-gated MLP) has no 'gate' to adapt
    const LoadedModel gpt2 = load_model(test::data_path("hf/gpt2"));
    TrainModel plain(gpt2.spec, gpt2.weights, true);
    try {
      Lora lora(plain, {4, 8.0, 0.0, {"q", "gate"}, 0});
      ADD_FAILURE() << "adapted a gate projection GPT-2 does not have";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("layer 0 has a non-gated MLP"), std::string::npos)
          << e.what();
    }
    Lora up(plain, {4, 8.0, 0.0, {"up", "down"}, 0});  // its MLP's two projections are fine
    EXPECT_EQ(up.adapters().size(), 4u);
  }

  const std::string out = test::make_temp_dir("kiln_lora_bad_");
  auto expect_error = [&](const std::string& needle) {
    try {
      load_lora(out, loaded);
      ADD_FAILURE() << "no error; expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("adapter_config.json: not found");
  std::ofstream(out + "/adapter_config.json")
      << R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4})";
  const Tensor a = Tensor::zeros(DType::F32, {2, loaded.spec.hidden_size});
  write_safetensors(out + "/adapter_model.safetensors",
                    {{"base_model.model.model.layers.0.self_attn.nope.lora_A.weight", a}});
  expect_error("the model has no module 'model.layers.0.self_attn.nope'");
  write_safetensors(out + "/adapter_model.safetensors",
                    {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                      Tensor::zeros(DType::F32, {3, 5})}});
  expect_error("has shape [3, 5], expected");
  write_safetensors(out + "/adapter_model.safetensors",
                    {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", a}});
  expect_error("has only one of lora_A and lora_B");
  write_safetensors(out + "/adapter_model.safetensors", {{"something.else", a}});
  expect_error("is not a LoRA A or B weight");
  std::ofstream(out + "/adapter_config.json") << R"({"peft_type": "IA3", "r": 2})";
  expect_error("is not LORA");
  fs::remove_all(out);
}

}  // namespace
}  // namespace kiln::train

namespace kiln::train {
namespace {

// MoE experts and latent attention have no adapters: asking for them is a clear error that
// names the layer and target; the dense projections of the same models still train.
TEST(Lora, RefusesMoeExpertsAndLatentAttentionByName) {
  const LoadedModel mixtral = load_model(test::data_path("hf/mixtral"));
  {
    TrainModel model(mixtral.spec, mixtral.weights, true);
    try {
      Lora lora(model, {4, 8.0, 0.0, {"q", "up"}, 0});
      ADD_FAILURE() << "LoRA on the experts of an MoE layer was accepted";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("layer 0 is a mixture of experts"), std::string::npos) << what;
      EXPECT_NE(what.find("'up'"), std::string::npos) << what;
      EXPECT_NE(what.find("not supported yet"), std::string::npos) << what;
    }
    EXPECT_TRUE(model.parameters().empty());  // refused before adding any adapter
  }
  TrainModel model(mixtral.spec, mixtral.weights, true);
  Lora lora(model, {4, 8.0, 0.0, {"q", "k", "v", "o"}, 0});
  const Batch b = fixture_batch(test::data_path("hf/mixtral"));
  const std::vector<int32_t> targets = next_token_targets(b.tokens.data(), nullptr, b.batch, b.T);
  const double loss = model.forward_backward(b.tokens.data(), targets.data(), b.batch, b.T);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_EQ(model.parameters().size(), 2u * 4u * 2u);  // A and B, 4 targets, 2 layers

  const LoadedModel deepseek = load_model(test::data_path("hf/deepseek_v3"));
  TrainModel latent(deepseek.spec, deepseek.weights, true);
  try {
    Lora bad(latent, {4, 8.0, 0.0, {"q"}, 0});
    ADD_FAILURE() << "LoRA on latent attention was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 0 uses multi-head latent attention"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kiln::train
