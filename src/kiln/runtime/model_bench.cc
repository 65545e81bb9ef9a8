// Timing of prefill and decode, weight and cache sizes, and the limit measurements.
#include "kiln/runtime/model_bench.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>

#include "kiln/core/error.h"
#include "kiln/layers/model.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/kernels.h"
#include "kiln/ops/linear.h"
#include "kiln/runtime/machine_limits.h"

namespace kiln {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

int32_t argmax(const float* logits, int64_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
}

// Multiply-adds x 2 of causal attention over T new tokens after `start` cached ones.
double attention_flops(const ModelSpec& spec, int64_t start, int64_t tokens) {
  double flops = 0.0;
  for (const LayerSpec& layer : spec.layers) {
    const AttentionSpec& a = layer.attention;
    const int64_t value_dim = a.value_head_dim > 0 ? a.value_head_dim : a.head_dim;
    double keys = 0.0;  // visible keys summed over the new tokens
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t position = start + t;
      int64_t first = 0;  // the first visible key, as ops/attention.h defines it
      if (a.sliding_window > 0) first = std::max<int64_t>(first, position - a.sliding_window + 1);
      if (a.chunk_size > 0) first = std::max(first, position - position % a.chunk_size);
      keys += static_cast<double>(position + 1 - first);
    }
    flops += 2.0 * static_cast<double>(a.num_heads * (a.head_dim + value_dim)) * keys;
  }
  return flops;
}

// Times `run` (best of `repeats` after one warm-up) and returns seconds.
template <typename Run>
double best_seconds(int repeats, Run run) {
  run();
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(best, seconds_since(start));
  }
  return best;
}

}  // namespace

ModelBenchResult run_model_bench(const LoadedModel& loaded, const ModelBenchOptions& options) {
  check(options.prompt_tokens > 0 && options.gen_tokens > 0,
        "bench: --prompt-tokens and --gen-tokens must be positive");
  if (options.threads > 0) omp_set_num_threads(options.threads);
  ModelBenchResult result;
  result.kernels = ops::active_kernels().name;
  result.threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  result.prompt_tokens = options.prompt_tokens;
  result.gen_tokens = options.gen_tokens;

  const ModelSpec& spec = loaded.spec;
  const Model model(spec, loaded.weights);
  const std::string embedding = names::embedding(names::token_embedder());
  const std::string lm_head = names::kernel(names::lm_head());
  double per_token_linear_params = 0.0;  // weights every prompt token multiplies with
  for (const auto& [name, tensor] : loaded.weights) {
    result.weight_bytes += static_cast<double>(tensor.nbytes());
    // (a tied embedding is read whole per token, unless a head copy is read instead)
    if (name != embedding || (spec.tie_word_embeddings && !loaded.weights.count(lm_head)))
      result.decode_weight_bytes += static_cast<double>(tensor.nbytes());
    if (tensor.ndim() >= 2 && name != embedding && name != lm_head)
      per_token_linear_params += static_cast<double>(tensor.numel());
  }

  std::mt19937 rng(1234);
  std::vector<int32_t> prompt(options.prompt_tokens);  // [P]
  for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % spec.vocab_size);
  const int64_t capacity = options.prompt_tokens + options.gen_tokens;
  ForwardOptions last_only;
  last_only.last_position_only = true;
  {  // Warm-up: touches every weight page once, so that timing excludes page faults.
    KvCache warm = model.make_cache(1, 1);
    model.forward(prompt.data(), 1, 1, warm, last_only);
  }

  KvCache cache = model.make_cache(1, capacity);
  result.kv_cache_bytes = static_cast<double>(cache.bytes_per_token() * capacity);
  Workspace workspace;
  double cpu_start = cpu_seconds();
  auto start = std::chrono::steady_clock::now();
  const float* logits =
      model.forward(prompt.data(), 1, options.prompt_tokens, cache, workspace, last_only);
  result.prefill_seconds = seconds_since(start);
  result.prefill_cpu_seconds = cpu_seconds() - cpu_start;
  int32_t next = argmax(logits, spec.vocab_size);
  cpu_start = cpu_seconds();
  start = std::chrono::steady_clock::now();
  for (int64_t g = 0; g < options.gen_tokens; ++g) {
    logits = model.forward(&next, 1, 1, cache, workspace, last_only);
    next = argmax(logits, spec.vocab_size);
  }
  result.decode_seconds = seconds_since(start);
  result.decode_cpu_seconds = cpu_seconds() - cpu_start;
  result.peak_rss_mb = peak_rss_mb();

  const double P = static_cast<double>(options.prompt_tokens);
  result.prefill_flops = 2.0 * P * per_token_linear_params +
                         2.0 * static_cast<double>(spec.hidden_size * spec.vocab_size) +
                         attention_flops(spec, 0, options.prompt_tokens);
  result.prefill_tokens_per_s = P / result.prefill_seconds;
  result.prefill_gflops = result.prefill_flops / result.prefill_seconds / 1e9;
  result.decode_tokens_per_s = static_cast<double>(options.gen_tokens) / result.decode_seconds;
  result.decode_gb_s = result.decode_weight_bytes * result.decode_tokens_per_s / 1e9;

  // Limits, measured now.
  result.read_bandwidth_gb_s =
      measure_read_bandwidth_gbs(options.bandwidth_bytes, options.threads, 5);
  result.decode_bandwidth_fraction = result.decode_gb_s / result.read_bandwidth_gb_s;
  std::map<std::pair<int64_t, int64_t>, std::string> shapes;  // (in, out) -> a weight of it
  const std::string layer0 = names::layer(0) + "/";
  for (const auto& [name, tensor] : loaded.weights)
    if (tensor.ndim() == 2 && name.rfind(layer0, 0) == 0)
      shapes.emplace(std::make_pair(tensor.dim(1), tensor.dim(0)), name);
  double flops = 0.0, kiln_seconds = 0.0, blas_seconds = 0.0;
  for (const auto& [in_out, name] : shapes) {
    const auto [in, out] = in_out;
    const Tensor weight = loaded.weights.at(name).contiguous();
    GemmShapeResult g{name, options.prompt_tokens, in, out, 0.0, 0.0};
    std::vector<float> x(g.rows * in, 0.01f), y(g.rows * out);  // [rows, in], [rows, out]
    const double shape_flops = 2.0 * static_cast<double>(g.rows * in * out);
    const double kiln = best_seconds(options.repeats, [&] {
      ops::linear(x.data(), weight.raw(), weight.dtype(), nullptr, y.data(), g.rows, in, out);
    });
    g.kiln_gflops = shape_flops / kiln / 1e9;
    g.openblas_gflops =
        measure_openblas_sgemm_gflops(g.rows, out, in, options.threads, options.repeats);
    flops += shape_flops;
    kiln_seconds += kiln;
    blas_seconds += shape_flops / (g.openblas_gflops * 1e9);
    result.gemm_shapes.push_back(g);
  }
  if (flops > 0) {
    result.kiln_gemm_gflops = flops / kiln_seconds / 1e9;
    result.openblas_gflops = flops / blas_seconds / 1e9;
  }
  return result;
}

}  // namespace kiln
