// Prefilling a prompt in two passes ([prefix], then [rest] at start = len(prefix)) against one
// pass over [prefix + rest], on every HF fixture: what the server's prefix cache relies on when
// it reuses a cached prefix's KV and runs only the rest. The linear kernels block their rows
// differently for different row counts, so the two are close but not bitwise equal (the
// prefix cache is therefore opt-in, docs/serving.md): the test prints the largest logit
// difference and the number of differing cache bytes, and bounds the difference.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

#include "hf_fixtures.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"

namespace kiln {
namespace {

class ChunkedPrefill : public ::testing::TestWithParam<std::string> {};

// Values of the layers' caches over positions [0, length) that differ between a and b.
int64_t differing_cache_values(KvCache& a, KvCache& b, int64_t layers, int64_t length) {
  int64_t differing = 0;
  for (int64_t i = 0; i < layers; ++i) {
    LayerKvCache& x = a.layer(i);
    LayerKvCache& y = b.layer(i);
    for (auto [p, q] :
         {std::pair{&x.keys, &y.keys}, std::pair{&x.values, &y.values},
          std::pair{&x.latent, &y.latent}, std::pair{&x.rotary_keys, &y.rotary_keys}}) {
      if (!p->defined()) continue;
      const int64_t per_position = p->numel() / p->dim(1);  // batch 1
      const auto* u = static_cast<const uint8_t*>(p->raw());
      const auto* v = static_cast<const uint8_t*>(q->raw());
      const int64_t bytes = length * per_position * static_cast<int64_t>(dtype_size(p->dtype()));
      for (int64_t j = 0; j < bytes; ++j) differing += u[j] != v[j];
    }
  }
  return differing;
}

TEST_P(ChunkedPrefill, MatchesTheWholePromptClosely) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const LoadedModel loaded = load_model(test::hf_fixture_path(GetParam()));
  const Model model(loaded.spec, loaded.weights);
  const int64_t vocab = loaded.spec.vocab_size;
  std::vector<int32_t> prompt;
  for (int32_t i = 0; i < 40; ++i) prompt.push_back((i * 37 + 11) % static_cast<int32_t>(vocab));
  const auto total = static_cast<int64_t>(prompt.size());
  ForwardOptions last;
  last.last_position_only = true;
  KvCache whole = model.make_cache(1, 64);
  Workspace w1;
  const float* a = model.forward(prompt.data(), 1, total, whole, w1, last);
  const std::vector<float> want(a, a + vocab);
  for (int64_t split : {1, 16, 32, 39}) {
    KvCache parts = model.make_cache(1, 64);
    Workspace w2;
    model.forward(prompt.data(), 1, split, parts, w2, last);
    const float* b = model.forward(prompt.data() + split, 1, total - split, parts, w2, last);
    double max_diff = 0.0;
    for (int64_t v = 0; v < vocab; ++v)
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(b[v]) - want[v]));
    const int64_t cache_diff =
        differing_cache_values(whole, parts, model.spec().num_layers(), total);
    std::cout << GetParam() << " split " << split << ": max logit difference " << max_diff
              << ", differing cache bytes " << cache_diff << std::endl;
    EXPECT_LT(max_diff, 1e-4) << "split " << split;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ChunkedPrefill, ::testing::ValuesIn(test::hf_fixture_names()),
                         test::FixtureName());

}  // namespace
}  // namespace kiln
