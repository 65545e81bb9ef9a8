// The fast kernels on the bundled tinycoder model (bf16 weights) over whole golden sequences:
// 50+ tokens per forward take the GEMM path, which rounds activations to bf16 on AVX-512.
// Teacher-forced greedy choices must still equal the golden ids, and the logits stay close
// to the reference kernels' (errors printed). The same for decode (one token per pass: the
// GEMV) in each mode of the AVX-512 bf16 GEMV.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "kiln/cli/command.h"
#include "kiln/io/json.h"
#include "kiln/layers/model.h"
#include "kiln/models/loader.h"
#include "kiln/ops/kernels.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(FastKernelsTinycoder, WholeSequenceGreedyChoicesMatchGolden) {
  const LoadedModel loaded = load_model(cli::default_model_path());
  const Model model(loaded.spec, loaded.weights);
  const int64_t vocab = loaded.spec.vocab_size;
  const Json cases = read_json_file(cli::default_model_path() + "/golden.json").at("greedy");
  double worst = 0.0;
  for (const Json& c : cases) {
    const std::vector<int32_t> ids = c.at("ids").get<std::vector<int32_t>>();
    const int64_t prompt = static_cast<int64_t>(c.at("prompt_ids").size());
    const int64_t T = static_cast<int64_t>(ids.size()) - 1;
    auto run = [&](const std::string& kernels) {
      ops::use_kernels(kernels);
      KvCache cache = model.make_cache(1, T);
      return model.forward(ids.data(), 1, T, cache);  // [1, T, V]
    };
    const Tensor fast = run("auto");
    const Tensor reference = run("reference");
    ops::use_kernels("auto");
    worst = std::max(worst, test::max_abs_diff(fast, reference));
    for (int64_t t = prompt - 1; t < T; ++t) {
      const float* row = fast.data<float>() + t * vocab;  // [V]
      EXPECT_EQ(std::max_element(row, row + vocab) - row, ids[t + 1]) << "position " << t;
    }
  }
  std::cout << ops::active_kernels().name
            << " vs reference kernels, whole golden sequences: logits max abs err = " << worst
            << std::endl;
  EXPECT_LE(worst, 0.1);
}

// Decode (one token per pass: the GEMV) of the golden sequences, teacher-forced, with the
// AVX-512 bf16 GEMV in each mode (ops::Bf16Gemv) against the reference kernels (f32
// activations): the default split mode and the f32 widening keep every greedy choice and
// logits within 2e-3 (errors printed); bf16-rounded activations (opt-in) are printed with
// their greedy agreement.
TEST(FastKernelsTinycoder, DecodeBf16GemvModesAgainstReference) {
  const std::vector<std::string> sets = ops::available_kernels();
  if (std::find(sets.begin(), sets.end(), "avx512") == sets.end())
    GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  const LoadedModel loaded = load_model(cli::default_model_path());
  const Model model(loaded.spec, loaded.weights);
  const int64_t vocab = loaded.spec.vocab_size;
  const Json cases = read_json_file(cli::default_model_path() + "/golden.json").at("greedy");
  // Logits of every position, one token per forward.   returns [T, V]
  const auto decode = [&](const std::vector<int32_t>& ids) {
    const int64_t T = static_cast<int64_t>(ids.size()) - 1;
    KvCache cache = model.make_cache(1, T);
    std::vector<float> logits(T * vocab);
    for (int64_t t = 0; t < T; ++t) {
      const Tensor row = model.forward(ids.data() + t, 1, 1, cache);  // [1, 1, V]
      std::copy(row.data<float>(), row.data<float>() + vocab, logits.begin() + t * vocab);
    }
    return logits;
  };
  const ops::Bf16Gemv modes[] = {ops::Bf16Gemv::kSplit, ops::Bf16Gemv::kWiden,
                                 ops::Bf16Gemv::kRounded};
  double worst[3] = {};
  int64_t agree[3] = {}, choices = 0;
  for (const Json& c : cases) {
    const std::vector<int32_t> ids = c.at("ids").get<std::vector<int32_t>>();
    const int64_t prompt = static_cast<int64_t>(c.at("prompt_ids").size());
    ops::use_kernels("reference");
    const std::vector<float> reference = decode(ids);
    ops::use_kernels("avx512");
    choices += static_cast<int64_t>(ids.size()) - prompt;
    for (int m = 0; m < 3; ++m) {
      ops::use_bf16_gemv(modes[m]);
      const std::vector<float> fast = decode(ids);
      for (size_t i = 0; i < fast.size(); ++i)
        worst[m] = std::max(worst[m], static_cast<double>(std::fabs(fast[i] - reference[i])));
      for (int64_t t = prompt - 1; t + 1 < static_cast<int64_t>(ids.size()); ++t) {
        const float* row = fast.data() + t * vocab;  // [V]
        const bool same = std::max_element(row, row + vocab) - row == ids[t + 1];
        agree[m] += same;
        if (modes[m] != ops::Bf16Gemv::kRounded) {
          EXPECT_TRUE(same) << ops::bf16_gemv_name(modes[m]) << " position " << t;
        }
      }
    }
    ops::use_bf16_gemv(ops::Bf16Gemv::kSplit);
    ops::use_kernels("auto");
  }
  for (int m = 0; m < 3; ++m) {
    std::cout << "avx512 bf16 GEMV " << ops::bf16_gemv_name(modes[m])
              << " decode vs reference kernels: logits max abs err = " << worst[m] << ", greedy "
              << agree[m] << " / " << choices << " golden choices" << std::endl;
    if (modes[m] != ops::Bf16Gemv::kRounded) {
      EXPECT_LE(worst[m], 2e-3) << ops::bf16_gemv_name(modes[m]);
    }
  }
}

}  // namespace
}  // namespace kiln
