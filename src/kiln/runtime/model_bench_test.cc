// `run_model_bench` on the bundled tinycoder model with tiny sizes: every figure is filled
// and consistent (no timing assertions: the machine is shared).
#include "kiln/runtime/model_bench.h"

#include <gtest/gtest.h>

#include <iostream>

#include "kiln/cli/command.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(ModelBench, TinycoderFiguresAreConsistent) {
  const LoadedModel loaded = load_model(cli::default_model_path());
  ModelBenchOptions options;
  options.prompt_tokens = 24;
  options.gen_tokens = 4;
  options.bandwidth_bytes = size_t{16} << 20;
  options.repeats = 1;
  const ModelBenchResult r = run_model_bench(loaded, options);
  std::cout << "tinycoder: prefill " << r.prefill_tokens_per_s << " tokens/s, decode "
            << r.decode_tokens_per_s << " tokens/s, " << r.decode_gb_s << " GB/s, peak RSS "
            << r.peak_rss_mb << " MB\n";
  EXPECT_GT(r.prefill_tokens_per_s, 0.0);
  EXPECT_GT(r.decode_tokens_per_s, 0.0);
  EXPECT_GT(r.read_bandwidth_gb_s, 0.0);
  EXPECT_NEAR(r.decode_bandwidth_fraction, r.decode_gb_s / r.read_bandwidth_gb_s, 1e-9);
  // Tied embeddings: every weight is read per decoded token; the bf16 checkpoint holds
  // 5.77M parameters.
  EXPECT_EQ(r.decode_weight_bytes, r.weight_bytes);
  EXPECT_NEAR(r.weight_bytes, 2.0 * 5770496, 1e5);
  // Four distinct linear shapes in a layer: q/o, k/v, gate/up, down.
  EXPECT_EQ(r.gemm_shapes.size(), 4u);
  EXPECT_GT(r.openblas_gflops, 0.0);
  EXPECT_GT(r.kiln_gemm_gflops, 0.0);
  EXPECT_GE(r.peak_rss_mb, r.weight_bytes / (1 << 20));
}

}  // namespace
}  // namespace kiln
