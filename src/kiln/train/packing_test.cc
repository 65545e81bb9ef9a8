// Sequence packing: a row of packed documents (TrainModel's `segments`) computes what each
// document computes alone (logits, loss weighted by targets, every gradient), and
// pack_windows() fills rows greedily with one segment id per window.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <tuple>

#include "kiln/core/error.h"
#include "kiln/io/safetensors.h"
#include "kiln/models/loader.h"
#include "kiln/train/backward.h"
#include "kiln/train/data.h"
#include "kiln/train/train_model.h"
#include "test_util.h"

namespace kiln::train {
namespace {

std::vector<int32_t> fixture_tokens(const std::string& dir, int64_t n) {
  const Tensor ids = SafetensorsFile::open(dir + "/reference.safetensors").get("input_ids");
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(static_cast<int32_t>(ids.item_as_double(i)));
  return out;
}

class Packing : public ::testing::TestWithParam<std::string> {};

TEST_P(Packing, PackedDocumentsComputeWhatEachAloneDoes) {
  const std::string dir = test::data_path("hf/" + GetParam());
  const LoadedModel loaded = load_model(dir);
  TrainModel model(loaded.spec, loaded.weights);
  const std::vector<int32_t> row = fixture_tokens(dir, 20);
  const int64_t split = 8, T = 20;
  // Packed: the first token of the second document is not predicted.
  std::vector<uint8_t> mask(T, 1);
  mask[0] = mask[split] = 0;
  std::vector<int32_t> segments(T, 0);
  std::fill(segments.begin() + split, segments.end(), 1);
  const std::vector<int32_t> targets = next_token_targets(row.data(), mask.data(), 1, T);
  const Tensor packed_logits = model.logits(row.data(), 1, T, segments.data());
  model.zero_gradients();
  const double packed =
      model.forward_backward(row.data(), targets.data(), 1, T, 64, segments.data());
  ParameterMap packed_grads;
  for (const auto& [name, g] : model.gradients()) packed_grads[name] = g.contiguous(true);

  // Each document alone, its gradient weighted by its share of the targets.
  const std::vector<int32_t> a(row.begin(), row.begin() + split), b(row.begin() + split, row.end());
  const auto na = static_cast<double>(split - 1), nb = static_cast<double>(T - split - 1);
  double expected = 0.0, logit_err = 0.0;
  ParameterMap weighted;
  for (const auto& [name, g] : model.gradients()) weighted[name] = Tensor::zeros_like(g);
  for (const auto& [doc, share, offset] :
       {std::tuple{&a, na / (na + nb), int64_t{0}}, std::tuple{&b, nb / (na + nb), split}}) {
    const auto n = static_cast<int64_t>(doc->size());
    const std::vector<int32_t> t = next_token_targets(doc->data(), nullptr, 1, n);
    const Tensor alone = model.logits(doc->data(), 1, n);
    const int64_t V = alone.dim(2);
    for (int64_t i = 0; i < n * V; ++i)
      logit_err = std::max(
          logit_err, std::abs(static_cast<double>(alone.data<float>()[i] -
                                                  packed_logits.data<float>()[offset * V + i])));
    model.zero_gradients();
    expected += share * model.forward_backward(doc->data(), t.data(), 1, n);
    for (auto& [name, w] : weighted) {
      const float* g = model.gradients().at(name).data<float>();
      float* out = w.mutable_data<float>();
      for (int64_t i = 0; i < w.numel(); ++i) out[i] += static_cast<float>(share) * g[i];
    }
  }
  double worst = 0.0;
  std::string worst_name;
  for (const auto& [name, w] : weighted) {
    double max_ref = 0.0;
    for (int64_t i = 0; i < w.numel(); ++i)
      max_ref = std::max(max_ref, std::abs(w.item_as_double(i)));
    const double diff = test::max_abs_diff(packed_grads.at(name), w);
    if (max_ref < 1e-6) {
      // A gradient that is exactly 0 (GPT-2's key bias: q . b_k shifts all of a query's logits
      // alike) is f32 noise on both sides, compared in absolute terms.
      EXPECT_LE(diff, 1e-6) << name;
      continue;
    }
    const double rel = diff / max_ref;
    if (rel > worst) worst = rel, worst_name = name;
  }
  std::cout << GetParam() << " packed vs alone: logits max abs diff " << logit_err << ", loss "
            << packed << " vs " << expected << ", worst gradient diff / max |grad| " << worst
            << " (" << worst_name << ")" << std::endl;
  EXPECT_LE(logit_err, 1e-5);
  EXPECT_NEAR(packed, expected, 1e-6);
  EXPECT_LE(worst, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Packing,
                         ::testing::Values("llama", "mistral", "gemma", "gemma2", "gemma3_text",
                                           "olmo2", "qwen3", "gpt2", "gpt_neox", "phi", "falcon"));

TEST(PackWindows, FillsRowsGreedilyWithOneSegmentPerWindow) {
  auto window = [](size_t n) {
    Window w;
    w.tokens.assign(n, 5);
    w.loss.assign(n, 1);
    w.loss[0] = 0;
    return w;
  };
  const std::vector<Window> packed = pack_windows({window(3), window(4), window(2), window(5)}, 8);
  ASSERT_EQ(packed.size(), 2u);
  EXPECT_EQ(packed[0].segment, (std::vector<int32_t>{0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(packed[1].segment, (std::vector<int32_t>{0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(packed[1].loss, (std::vector<uint8_t>{0, 1, 0, 1, 1, 1, 1}));
  EXPECT_THROW(pack_windows({window(9)}, 8), Error);
}

}  // namespace
}  // namespace kiln::train
