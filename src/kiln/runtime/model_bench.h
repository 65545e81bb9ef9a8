// Whole-model speed: prefill and decode of a loaded model, next to the machine's limits
// measured in the same run (read bandwidth; Kiln's GEMM and OpenBLAS sgemm on the model's
// own linear shapes). Used by `kiln bench`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/models/loader.h"

namespace kiln {

struct ModelBenchOptions {
  int64_t prompt_tokens = 512;
  int64_t gen_tokens = 128;
  int threads = 0;                           // 0 = all cores
  size_t bandwidth_bytes = size_t{1} << 30;  // buffer of the read-bandwidth test
  int repeats = 3;                           // best of, for the GEMM limits
};

// Kiln's linear kernel and OpenBLAS on one [rows, in] x [in, out] shape of the model.
struct GemmShapeResult {
  std::string weight;  // Kiln name of the layer-0 weight it was measured with
  int64_t rows = 0, in = 0, out = 0;
  double kiln_gflops = 0.0;
  double openblas_gflops = 0.0;
};

struct ModelBenchResult {
  std::string kernels;  // the kernel set (ops/kernels.h)
  int threads = 0;
  int64_t prompt_tokens = 0, gen_tokens = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  // CPU time (user + system, all threads) of the same phases: below threads x wall time,
  // the machine was shared and the wall-clock figures understate the kernels.
  double prefill_cpu_seconds = 0.0, decode_cpu_seconds = 0.0;
  double prefill_tokens_per_s = 0.0, decode_tokens_per_s = 0.0;
  double prefill_flops = 0.0;              // linear + attention multiply-adds x 2 of the prefill
  double prefill_gflops = 0.0;             // prefill_flops / prefill_seconds / 1e9
  double weight_bytes = 0.0;               // all weights (checkpoint dtype)
  double decode_weight_bytes = 0.0;        // weights read per decoded token
  double decode_gb_s = 0.0;                // decode_weight_bytes x decode tokens/s / 1e9
  double kv_cache_bytes = 0.0;             // the cache of prompt + generated tokens
  double peak_rss_mb = 0.0;                // after prefill and decode, before the limit tests
  double read_bandwidth_gb_s = 0.0;        // measured now
  double decode_bandwidth_fraction = 0.0;  // decode_gb_s / read_bandwidth_gb_s
  std::vector<GemmShapeResult> gemm_shapes;
  double kiln_gemm_gflops = 0.0;  // over gemm_shapes, FLOP-weighted (total FLOPs / time)
  double openblas_gflops = 0.0;   // the same for cblas_sgemm on f32 copies
};

// Runs `loaded` (a random prompt, greedy decode) and measures the limits. Sets the OpenMP
// thread count to options.threads when positive. Throws Error for non-positive token counts
// or a model that cannot be built.
ModelBenchResult run_model_bench(const LoadedModel& loaded, const ModelBenchOptions& options);

}  // namespace kiln
