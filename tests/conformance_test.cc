// Conformance of every HF fixture under tests/data/hf: logits and hidden states of a
// batched prefill within 1e-4 of the reference, the greedy continuation decoded with the
// KV cache identical, and cached decode steps equal to full recomputation.
#include <gtest/gtest.h>

#include <iostream>
#include <vector>

#include "hf_fixtures.h"
#include "kiln/io/safetensors.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/ops/top_k.h"
#include "kiln/verify/reference_check.h"

namespace kiln {
namespace {

constexpr double kTolerance = 1e-4;

class HfConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(HfConformance, LogitsHiddenStatesAndGreedyMatchReference) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  LoadedModel loaded = load_model(dir);
  Model model(loaded.spec, loaded.weights);
  const ReferenceReport report =
      check_against_reference(model, dir + "/reference.safetensors", kTolerance);
  ASSERT_GE(report.comparisons.size(), 2u + loaded.spec.layers.size());
  for (const TensorComparison& c : report.comparisons) {
    std::cout << GetParam() << ": " << c.name << " (" << c.kiln
              << ") max abs err = " << c.max_abs_err << std::endl;
    EXPECT_LE(c.max_abs_err, kTolerance) << c.name;
  }
  RecordProperty("logits_max_abs_err", std::to_string(report.logits_max_abs_err));
  RecordProperty("hidden_max_abs_err", std::to_string(report.hidden_max_abs_err));
  EXPECT_EQ(report.actual_greedy, report.expected_greedy);
  EXPECT_EQ(report.expected_greedy.size(), 32u);
}

// Decoding both rows of the batch step by step with the cache gives the logits that a full
// forward pass over the whole sequence gives at its last position.
TEST_P(HfConformance, BatchedCachedDecodeEqualsFullRecomputation) {
  KILN_SKIP_UNSUPPORTED_FIXTURE(GetParam());
  const std::string dir = test::hf_fixture_path(GetParam());
  LoadedModel loaded = load_model(dir);
  Model model(loaded.spec, loaded.weights);
  const Tensor input_ids = SafetensorsFile::open(dir + "/reference.safetensors").get("input_ids");
  const int64_t batch = input_ids.dim(0), prompt = input_ids.dim(1), steps = 12;
  const int64_t vocab = loaded.spec.vocab_size;
  std::vector<std::vector<int32_t>> rows(batch);  // [B][tokens so far]
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < prompt; ++t)
      rows[b].push_back(static_cast<int32_t>(input_ids.item_as_double(b * prompt + t)));

  KvCache cache = model.make_cache(batch, prompt + steps);
  std::vector<int32_t> flat;  // [B, prompt]
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  Tensor logits = model.forward(flat.data(), batch, prompt, cache, {nullptr, true});  // [B, 1, V]
  double worst = 0.0;
  for (int64_t step = 0; step < steps; ++step) {
    std::vector<int32_t> next(batch);  // [B, 1]
    for (int64_t b = 0; b < batch; ++b) {
      next[b] = static_cast<int32_t>(ops::argmax(logits.data<float>() + b * vocab, vocab));
      rows[b].push_back(next[b]);
    }
    logits = model.forward(next.data(), batch, 1, cache, {nullptr, true});
    const int64_t length = prompt + step + 1;
    std::vector<int32_t> all;  // [B, length]
    for (const auto& row : rows) all.insert(all.end(), row.begin(), row.end());
    KvCache fresh = model.make_cache(batch, length);
    const Tensor full = model.forward(all.data(), batch, length, fresh, {nullptr, true});
    worst = std::max(worst, test::max_abs_diff(logits, full));
  }
  std::cout << GetParam() << ": cached vs full decode logits max abs err = " << worst << std::endl;
  EXPECT_LE(worst, kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfConformance, ::testing::ValuesIn(test::hf_fixture_names()),
                         test::FixtureName());

}  // namespace
}  // namespace kiln
