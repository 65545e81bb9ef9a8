// `kiln bench MODEL`: prefill and decode speed next to the machine's limits (read bandwidth,
// Kiln's GEMM and OpenBLAS sgemm on the model's shapes), as a table or JSON.
#include <cstdio>
#include <iostream>

#include "kiln/cli/command.h"
#include "kiln/io/json.h"
#include "kiln/models/loader.h"
#include "kiln/ops/kernels.h"
#include "kiln/runtime/model_bench.h"

namespace kiln::cli {
namespace {

Json to_json(const ModelBenchResult& r) {
  Json shapes = Json::array();
  for (const GemmShapeResult& g : r.gemm_shapes)
    shapes.push_back({{"weight", g.weight},
                      {"rows", g.rows},
                      {"in", g.in},
                      {"out", g.out},
                      {"kiln_gflops", g.kiln_gflops},
                      {"openblas_gflops", g.openblas_gflops}});
  return {{"kernels", r.kernels},
          {"threads", r.threads},
          {"prompt_tokens", r.prompt_tokens},
          {"gen_tokens", r.gen_tokens},
          {"prefill_seconds", r.prefill_seconds},
          {"prefill_tokens_per_s", r.prefill_tokens_per_s},
          {"prefill_gflops", r.prefill_gflops},
          {"decode_seconds", r.decode_seconds},
          {"prefill_cpu_seconds", r.prefill_cpu_seconds},
          {"decode_cpu_seconds", r.decode_cpu_seconds},
          {"decode_tokens_per_s", r.decode_tokens_per_s},
          {"decode_weight_bytes", r.decode_weight_bytes},
          {"decode_gb_s", r.decode_gb_s},
          {"read_bandwidth_gb_s", r.read_bandwidth_gb_s},
          {"decode_bandwidth_fraction", r.decode_bandwidth_fraction},
          {"kiln_gemm_gflops", r.kiln_gemm_gflops},
          {"openblas_gflops", r.openblas_gflops},
          {"prefill_vs_openblas", r.prefill_gflops / r.openblas_gflops},
          {"weight_bytes", r.weight_bytes},
          {"kv_cache_bytes", r.kv_cache_bytes},
          {"peak_rss_mb", r.peak_rss_mb},
          {"gemm_shapes", shapes}};
}

void print_table(const ModelBenchResult& r) {
  std::printf("kernels %s, %d threads, prompt %lld tokens, %lld generated\n", r.kernels.c_str(),
              r.threads, static_cast<long long>(r.prompt_tokens),
              static_cast<long long>(r.gen_tokens));
  std::printf("prefill  %9.1f tokens/s  %7.1f GFLOP/s  (%.2fx OpenBLAS sgemm %.1f GFLOP/s)\n",
              r.prefill_tokens_per_s, r.prefill_gflops, r.prefill_gflops / r.openblas_gflops,
              r.openblas_gflops);
  std::printf(
      "decode   %9.2f tokens/s  %7.1f GB/s of weights  (%.0f%% of read bandwidth %.1f GB/s)\n",
      r.decode_tokens_per_s, r.decode_gb_s, 100.0 * r.decode_bandwidth_fraction,
      r.read_bandwidth_gb_s);
  std::printf("CPU time prefill %.2f s of %.2f s x %d threads, decode %.2f s of %.2f s x %d\n",
              r.prefill_cpu_seconds, r.prefill_seconds, r.threads, r.decode_cpu_seconds,
              r.decode_seconds, r.threads);
  std::printf("GEMM on the model's shapes (%lld rows): Kiln %.1f GFLOP/s, OpenBLAS %.1f GFLOP/s\n",
              static_cast<long long>(r.prompt_tokens), r.kiln_gemm_gflops, r.openblas_gflops);
  for (const GemmShapeResult& g : r.gemm_shapes)
    std::printf("  %-44s in %6lld out %6lld  Kiln %7.1f  OpenBLAS %7.1f GFLOP/s\n",
                g.weight.c_str(), static_cast<long long>(g.in), static_cast<long long>(g.out),
                g.kiln_gflops, g.openblas_gflops);
  std::printf(
      "memory   peak RSS %.0f MB = weights %.0f MB + KV cache %.0f MB + activations "
      "and runtime %.0f MB\n",
      r.peak_rss_mb, r.weight_bytes / (1 << 20), r.kv_cache_bytes / (1 << 20),
      r.peak_rss_mb - (r.weight_bytes + r.kv_cache_bytes) / (1 << 20));
}

class BenchCommand : public Command {
 public:
  void configure(CLI::App& app) override {
    app.add_option("model", model_path_, "HuggingFace model folder or Kiln checkpoint")->required();
    add_family_options(app, family_);
    app.add_option("--prompt-tokens", options_.prompt_tokens, "Prompt length of the prefill");
    app.add_option("--gen-tokens", options_.gen_tokens, "Tokens to decode");
    app.add_option("--threads", options_.threads, "Threads (0 = all cores)");
    app.add_option("--kernels", kernels_, "Kernel set: auto, reference, avx2, avx512");
    app.add_flag("--json", json_, "Print JSON");
    app.add_flag("--mmap", mmap_,
                 "map the weight files instead of reading them into memory (opens faster; "
                 "decode may be slower, see docs/performance.md)");
  }

  int run() override {
    ops::use_kernels(kernels_);
    const LoadedModel loaded =
        load_model(model_path_, mmap_ ? Residency::kMapped : Residency::kResident, family_);
    const ModelBenchResult result = run_model_bench(loaded, options_);
    if (json_) {
      Json json = to_json(result);
      json["weights"] = mmap_ ? "mapped" : "resident";
      std::cout << json.dump(2) << "\n";
    } else {
      std::printf("weights  %s\n", mmap_ ? "mapped (--mmap)" : "read into memory");
      print_table(result);
    }
    return 0;
  }

 private:
  FamilyChoice family_;
  std::string model_path_;
  std::string kernels_ = "auto";
  ModelBenchOptions options_;
  bool json_ = false;
  bool mmap_ = false;
};

}  // namespace
KILN_COMMAND(BenchCommand, "bench",
             "Measure prefill and decode speed next to the machine's bandwidth and GEMM limits");
}  // namespace kiln::cli
