// Microbenchmarks of the CPU kernels on Llama-3.2-1B shapes, per kernel set, beside OpenBLAS
// sgemm. Rate counters (per second of wall time): weight_GB read, GFLOP computed.
//   build/bench/kiln_kernel_bench --benchmark_filter=linear_bf16
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/quant.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/gemm_bf16.h"
#include "kiln/ops/kernels.h"
#include "kiln/ops/linear.h"

namespace kiln {
namespace {

std::vector<float> random_floats(size_t n) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

std::vector<uint16_t> random_bf16(size_t n) {
  const std::vector<float> f = random_floats(n);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = f32_to_bf16(f[i]);
  return v;
}

// Args: kernel set index (ops::available_kernels()), rows, in, out.
void linear_bf16(benchmark::State& state) {
  const auto sets = ops::available_kernels();
  if (state.range(0) >= static_cast<int64_t>(sets.size())) return state.SkipWithError("no CPU");
  ops::use_kernels(sets[state.range(0)]);
  const int64_t rows = state.range(1), in = state.range(2), out = state.range(3);
  const std::vector<float> x = random_floats(rows * in);  // [rows, in]
  const std::vector<uint16_t> w = random_bf16(out * in);  // [out, in]
  std::vector<float> y(rows * out);                       // [rows, out]
  for (auto _ : state) {
    ops::linear(x.data(), w.data(), DType::BF16, nullptr, y.data(), rows, in, out);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(sets[state.range(0)]);
  const double iterations = static_cast<double>(state.iterations());
  state.counters["weight_GB"] =
      benchmark::Counter(iterations * out * in * 2 / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP"] =
      benchmark::Counter(iterations * 2.0 * rows * in * out / 1e9, benchmark::Counter::kIsRate);
}

void linear_f32(benchmark::State& state) {
  const auto sets = ops::available_kernels();
  if (state.range(0) >= static_cast<int64_t>(sets.size())) return state.SkipWithError("no CPU");
  ops::use_kernels(sets[state.range(0)]);
  const int64_t rows = state.range(1), in = state.range(2), out = state.range(3);
  const std::vector<float> x = random_floats(rows * in), w = random_floats(out * in);
  std::vector<float> y(rows * out);  // [rows, out]
  for (auto _ : state) {
    ops::linear(x.data(), w.data(), DType::F32, nullptr, y.data(), rows, in, out);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(sets[state.range(0)]);
  state.counters["GFLOP"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * rows * in * out / 1e9,
                         benchmark::Counter::kIsRate);
}

// Training's products (train/backward.cc) in f32 (ops::gemm_f32) and with bf16 operands
// (ops::gemm_bf16, `kiln train --compute-dtype bf16`). Args: kernel set index, dtype (0 f32,
// 1 bf16), product (0 forward y = x W^T, 1 dx = dy W, 2 dW = dy^T x), tokens, in, out (W is
// [out, in]).
void train_gemm(benchmark::State& state) {
  const auto sets = ops::available_kernels();
  if (state.range(0) >= static_cast<int64_t>(sets.size())) return state.SkipWithError("no CPU");
  ops::use_kernels(sets[state.range(0)]);
  const bool bf16 = state.range(1) == 1;
  const int64_t product = state.range(2), tokens = state.range(3), in = state.range(4),
                out = state.range(5);
  const std::vector<float> x = random_floats(tokens * in), w = random_floats(out * in),
                           dy = random_floats(tokens * out);
  std::vector<float> y(std::max(tokens * std::max(in, out), out * in));
  using Gemm =
      void (*)(const float*, bool, const float*, bool, float*, int64_t, int64_t, int64_t, bool);
  const Gemm gemm = bf16 ? Gemm{&ops::gemm_bf16} : Gemm{&ops::gemm_f32};
  for (auto _ : state) {
    if (product == 0) gemm(x.data(), false, w.data(), false, y.data(), tokens, in, out, false);
    if (product == 1) gemm(dy.data(), false, w.data(), true, y.data(), tokens, out, in, true);
    if (product == 2) gemm(dy.data(), true, x.data(), true, y.data(), out, tokens, in, true);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(sets[state.range(0)] + (bf16 ? " bf16" : " f32"));
  state.counters["GFLOP"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * tokens * in * out / 1e9,
                         benchmark::Counter::kIsRate);
}

// Args: kernel set index, format (0 Q8_0, 1 Q4_1, 2 Q4_1_128, 3 Q4_K, 4 Q6_K, 5 Q4_0), rows,
// in, out. Weights quantized from random normals (Q4_0 and the K-quants, which Kiln only
// reads: random bytes with f16 (super-)scales of order 1 / 256). weight_GB counts the stored
// (quantized) bytes.
void linear_quantized(benchmark::State& state) {
  const auto sets = ops::available_kernels();
  if (state.range(0) >= static_cast<int64_t>(sets.size())) return state.SkipWithError("no CPU");
  ops::use_kernels(sets[state.range(0)]);
  const DType format = std::array{DType::Q8_0, DType::Q4_1, DType::Q4_1_128,
                                  DType::Q4_K, DType::Q6_K, DType::Q4_0}[state.range(1)];
  const int64_t rows = state.range(2), in = state.range(3), out = state.range(4);
  const std::vector<float> x = random_floats(rows * in), w = random_floats(out * in);
  const size_t row_bytes = dtype_nbytes(format, in);
  std::vector<uint8_t> stored(out * row_bytes);  // [out] rows of blocks
  if (format == DType::Q4_K || format == DType::Q6_K || format == DType::Q4_0) {
    std::mt19937 rng(5);
    for (uint8_t& b : stored) b = static_cast<uint8_t>(rng() & 255);
    const uint16_t scale = f32_to_f16(1.0f / 256.0f);
    const size_t block = dtype_block_bytes(format);
    for (size_t at = 0; at < stored.size(); at += block) {
      std::memcpy(&stored[at + (format == DType::Q6_K ? 208 : 0)], &scale, 2);
      if (format == DType::Q4_K) std::memcpy(&stored[at + 2], &scale, 2);
    }
  } else {
    for (int64_t o = 0; o < out; ++o)
      quantize_row(format, w.data() + o * in, stored.data() + o * row_bytes, in);
  }
  std::vector<float> y(rows * out);  // [rows, out]
  for (auto _ : state) {
    ops::linear(x.data(), stored.data(), format, nullptr, y.data(), rows, in, out);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetLabel(sets[state.range(0)] + " " + std::string(dtype_name(format)));
  const double iterations = static_cast<double>(state.iterations());
  state.counters["weight_GB"] = benchmark::Counter(
      iterations * static_cast<double>(stored.size()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP"] =
      benchmark::Counter(iterations * 2.0 * rows * in * out / 1e9, benchmark::Counter::kIsRate);
}

// The same product with OpenBLAS on f32: y[rows, out] = x[rows, in] W^T.
void openblas_sgemm(benchmark::State& state) {
  const int64_t rows = state.range(1), in = state.range(2), out = state.range(3);
  const std::vector<float> x = random_floats(rows * in), w = random_floats(out * in);
  std::vector<float> y(rows * out);  // [rows, out]
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows),
                static_cast<int>(out), static_cast<int>(in), 1.0f, x.data(), static_cast<int>(in),
                w.data(), static_cast<int>(in), 0.0f, y.data(), static_cast<int>(out));
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * rows * in * out / 1e9,
                         benchmark::Counter::kIsRate);
}

// Args: kernel set index, new tokens T, cached positions before them. Llama-3.2-1B heads.
void attention(benchmark::State& state) {
  const auto sets = ops::available_kernels();
  if (state.range(0) >= static_cast<int64_t>(sets.size())) return state.SkipWithError("no CPU");
  ops::use_kernels(sets[state.range(0)]);
  ops::AttentionShape s;
  s.batch = 1;
  s.tokens = state.range(1);
  s.start = state.range(2);
  s.cache_len = s.cache_max = s.start + s.tokens;
  s.heads = 32;
  s.kv_heads = 8;
  s.head_dim = s.value_dim = 64;
  s.scale = 0.125f;
  const std::vector<float> q = random_floats(s.tokens * s.heads * 64);        // [1, T, Hq, D]
  const std::vector<float> k = random_floats(s.cache_max * s.kv_heads * 64);  // [1, S, Hkv, D]
  const std::vector<float> v = random_floats(s.cache_max * s.kv_heads * 64);  // [1, S, Hkv, D]
  std::vector<float> out(q.size());                                           // [1, T, Hq, D]
  for (auto _ : state) {
    ops::causal_attention(q.data(), k.data(), v.data(), out.data(), s);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(sets[state.range(0)]);
  double keys = 0;
  for (int64_t t = 0; t < s.tokens; ++t) keys += static_cast<double>(s.start + t + 1);
  state.counters["GFLOP"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * s.heads * 128 * keys / 1e9,
                         benchmark::Counter::kIsRate);
}

// Kernel sets: 0 reference, 1 avx2, 2 avx512 (skipped where the CPU lacks them).
void decode_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t set : {0, 1, 2})
    for (auto [in, out] :
         {std::pair<int64_t, int64_t>{2048, 8192}, {8192, 2048}, {2048, 512}, {8192, 16384}})
      b->Args({set, 1, in, out});
}
// The server's batched decode steps: 1 to 16 rows through the GEMV (AVX2, AVX-512).
void batched_decode_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t set : {1, 2})
    for (int64_t rows : {1, 4, 8, 16})
      for (auto [in, out] :
           {std::pair<int64_t, int64_t>{2048, 8192}, {8192, 2048}, {512, 32768}, {2048, 256}})
        b->Args({set, rows, in, out});
  // From DRAM (268 MB of bf16, over any L3): does a step of 8 rows keep the memory's rate?
  for (int64_t set : {1, 2})
    for (int64_t rows : {1, 4, 8}) {
      b->Args({set, rows, 8192, 16384});
      b->Args({set, rows, 2048, 65536});  // rows of 2048 inputs, as most of a 1B's weights
    }
}
void prefill_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t set : {1, 2})
    for (auto [in, out] : {std::pair<int64_t, int64_t>{2048, 2048}, {2048, 8192}, {8192, 2048}})
      b->Args({set, 512, in, out});
}

// Quantized formats on the decode shapes (1 row) and a 512-row prefill, fast sets only.
void quantized_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t set : {1, 2})
    for (int64_t format : {0, 1, 2, 5})
      for (int64_t rows : {1, 512})
        for (auto [in, out] : {std::pair<int64_t, int64_t>{2048, 8192}, {8192, 2048}})
          b->Args({set, format, rows, in, out});
  // A weight that stays in L2 (under 0.6 MB): the GEMV's arithmetic rate, not the memory's.
  for (int64_t set : {1, 2})
    for (int64_t format : {0, 1, 2, 5}) b->Args({set, format, 1, 2048, 256});
  // Weights larger than a 32 MB L3 (8192 x 16384: 71-143 MB), read from DRAM as in decode.
  for (int64_t set : {1, 2})
    for (int64_t format : {0, 1, 2, 3, 4, 5}) b->Args({set, format, 1, 8192, 16384});
}
// K-quants (Q4_K, Q6_K): the GEMV from DRAM, from L2 (2048 x 256: 295 / 430 KB), 4 rows.
void kquant_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t set : {1, 2})
    for (int64_t format : {3, 4}) {
      b->Args({set, format, 1, 2048, 8192});
      b->Args({set, format, 1, 2048, 256});
      b->Args({set, format, 4, 2048, 8192});
    }
}

BENCHMARK(linear_quantized)->Apply(quantized_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(linear_quantized)->Apply(kquant_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(linear_bf16)->Apply(decode_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(linear_bf16)->Apply(batched_decode_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(linear_bf16)->Apply(prefill_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(linear_f32)->Apply(prefill_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(openblas_sgemm)->Apply(prefill_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
// tinycoder's MLP up (256 -> 768) and the ~110M Llama's (768 -> 2048) at 2048 and 1024
// tokens, fast sets only.
void train_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t set : {1, 2})
    for (int64_t dtype : {0, 1})
      for (int64_t product : {0, 1, 2}) {
        b->Args({set, dtype, product, 2048, 256, 768});
        b->Args({set, dtype, product, 1024, 768, 2048});
      }
}
BENCHMARK(train_gemm)->Apply(train_shapes)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(attention)
    ->Args({0, 512, 0})
    ->Args({1, 512, 0})
    ->Args({2, 512, 0})
    ->Args({2, 1, 1023})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kiln
