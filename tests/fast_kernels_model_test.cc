// The fast kernels on the bundled tinycoder model (bf16 weights) over whole golden sequences:
// 50+ tokens per forward take the GEMM path, which rounds activations to bf16 on AVX-512.
// Teacher-forced greedy choices must still equal the golden ids, and the logits stay close
// to the reference kernels' (errors printed).
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>

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

}  // namespace
}  // namespace kiln
