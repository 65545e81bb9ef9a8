// Every fast CPU kernel set this machine can run, against the reference kernels on random
// shapes (odd sizes, tails of every block, chunk boundaries), with the error printed.
#include "kiln/ops/kernels.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/quant.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/linear.h"
#include "kiln/ops/softmax.h"
#include "test_util.h"

namespace kiln::ops {
namespace {

std::vector<std::string> fast_kernel_sets() {
  std::vector<std::string> names = available_kernels();
  names.erase(names.begin());  // the reference itself
  return names;
}

using test::random_vector;

// x as the AVX-512 bf16 GEMV takes it in `mode`: split, hi + lo (exact in f32); rounded, bf16.
float bf16_gemv_input(float x, Bf16Gemv mode) {
  const float hi = bf16_to_f32(f32_to_bf16(x));
  if (mode == Bf16Gemv::kRounded) return hi;
  if (mode == Bf16Gemv::kWiden) return x;
  return hi + bf16_to_f32(f32_to_bf16(x - hi));
}

// Weights of one dtype, stored as raw 16- or 32-bit words.
std::vector<uint32_t> weights_of(const std::vector<float>& w, DType dtype) {
  std::vector<uint32_t> words((w.size() * dtype_size(dtype) + 3) / 4);
  for (size_t i = 0; i < w.size(); ++i) {
    if (dtype == DType::F32) std::memcpy(&words[i], &w[i], 4);
    uint16_t half = dtype == DType::BF16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
    if (dtype != DType::F32) std::memcpy(reinterpret_cast<uint16_t*>(words.data()) + i, &half, 2);
  }
  return words;
}

double max_relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i])));
  return worst;
}

struct LinearCase {
  int64_t rows, in, out;
};

TEST(FastKernels, LinearMatchesReferenceForEveryDtypeAndShape) {
  std::vector<LinearCase> cases = {{1, 1, 1},     {1, 7, 3},      {2, 33, 5},     {3, 64, 13},
                                   {4, 100, 7},   {5, 31, 9},     {15, 47, 6},    {16, 16, 16},
                                   {17, 1031, 7}, {63, 513, 13},  {65, 1030, 67}, {130, 17, 3},
                                   {300, 96, 11}, {257, 520, 19}, {64, 2, 1}};
  std::mt19937 rng(11);
  for (int k = 0; k < 12; ++k)
    cases.push_back({1 + static_cast<int64_t>(rng() % 140), 1 + static_cast<int64_t>(rng() % 700),
                     1 + static_cast<int64_t>(rng() % 40)});
  for (const std::string& name : fast_kernel_sets()) {
    use_kernels(name);
    for (const DType dtype : {DType::F32, DType::BF16, DType::F16}) {
      double worst = 0.0;
      for (const LinearCase& c : cases) {
        const std::vector<float> x = random_vector(rng, c.rows * c.in);  // [rows, in]
        const std::vector<float> w = random_vector(rng, c.out * c.in);   // [out, in]
        const std::vector<float> bias = random_vector(rng, c.out);       // [out]
        const std::vector<uint32_t> stored = weights_of(w, dtype);
        std::vector<float> got(c.rows * c.out), want(c.rows * c.out);  // [rows, out]
        linear(x.data(), stored.data(), dtype, bias.data(), got.data(), c.rows, c.in, c.out);
        // The AVX-512 GEMM with bf16 weights rounds x to bf16: compare it with the reference
        // on the same rounded x, so that only summation order differs.
        std::vector<float> x_ref = x;
        // Its GEMV takes x as its mode does (ops::Bf16Gemv; the default splits x into two bf16).
        if (name == "avx512" && dtype == DType::BF16 && c.rows > kGemvMaxRows)
          for (float& v : x_ref) v = bf16_to_f32(f32_to_bf16(v));
        if (name == "avx512" && dtype == DType::BF16 && c.rows <= kGemvMaxRows)
          for (float& v : x_ref) v = bf16_gemv_input(v, bf16_gemv());
        linear_reference(x_ref.data(), stored.data(), dtype, bias.data(), want.data(), c.rows, c.in,
                         c.out);
        const double err = max_relative_error(got, want) / std::sqrt(static_cast<double>(c.in));
        worst = std::max(worst, err);
        EXPECT_LE(err, 2e-6) << name << " " << dtype_name(dtype) << " rows " << c.rows << " in "
                             << c.in << " out " << c.out;
      }
      std::cout << name << " linear " << dtype_name(dtype)
                << ": max |err| / (1 + |y|) / sqrt(in) = " << worst << std::endl;
    }
  }
  use_kernels("auto");
}

namespace {

// w [out, in] as `dtype` stores it: quantized row by row, or as the dtype's words.
std::vector<uint8_t> stored_weights(const std::vector<float>& w, DType dtype, int64_t out,
                                    int64_t in) {
  const size_t row_bytes = dtype_nbytes(dtype, in);
  std::vector<uint8_t> stored(out * row_bytes);
  if (dtype_block(dtype) > 1) {
    for (int64_t o = 0; o < out; ++o)
      quantize_row(dtype, w.data() + o * in, stored.data() + o * row_bytes, in);
  } else {
    const std::vector<uint32_t> words = weights_of(w, dtype);
    std::memcpy(stored.data(), words.data(), stored.size());
  }
  return stored;
}

}  // namespace

// Batch invariance of the GEMV (the server's decode steps share one call for up to 16
// sequences, Model::kMaxDecodeRows, and promise each the same tokens as alone): for every
// kernel set, weight format and 1 to 16 rows, each row of the call is bitwise the row computed
// alone. Odd depths (every tail of a vector or a pair), output counts that leave partial tiles
// per thread, with and without bias.
TEST(FastKernels, GemvRowsAreBitwiseTheSameAloneOrBatched) {
  std::mt19937 rng(23);
  constexpr int64_t kRows = 16;
  struct Shape {
    int64_t in, out;
  };
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (const DType dtype :
         {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_1, DType::Q4_1_128}) {
      const bool quantized = dtype_block(dtype) > 1;
      const std::vector<Shape> shapes =
          quantized ? std::vector<Shape>{{128, 13}, {256, 67}, {384, 3}}
                    : std::vector<Shape>{{1, 5}, {33, 67}, {100, 13}, {1030, 7}, {64, 1}};
      int64_t compared = 0;
      // The AVX-512 bf16 GEMV in each of its modes (ops::Bf16Gemv).
      std::vector<Bf16Gemv> modes = {bf16_gemv()};
      if (name == "avx512" && dtype == DType::BF16)
        modes = {Bf16Gemv::kSplit, Bf16Gemv::kRounded, Bf16Gemv::kWiden};
      for (const Bf16Gemv mode : modes)
        for (const Shape& s : shapes) {
          use_bf16_gemv(mode);
          const std::vector<float> x = random_vector(rng, kRows * s.in);  // [kRows, in]
          const std::vector<float> w = random_vector(rng, s.out * s.in);  // [out, in]
          const std::vector<float> bias = random_vector(rng, s.out);      // [out]
          const std::vector<uint8_t> stored = stored_weights(w, dtype, s.out, s.in);
          for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
            std::vector<float> alone(kRows * s.out);  // [kRows, out]
            for (int64_t r = 0; r < kRows; ++r)
              linear(x.data() + r * s.in, stored.data(), dtype, b, alone.data() + r * s.out, 1,
                     s.in, s.out);
            for (int64_t rows = 2; rows <= kRows; ++rows) {
              // Rows [first, first + rows) of x in one call, first varying so that every row
              // meets different neighbours.
              const int64_t first = (rows * 7) % (kRows - rows + 1);
              std::vector<float> batched(rows * s.out);  // [rows, out]
              linear(x.data() + first * s.in, stored.data(), dtype, b, batched.data(), rows, s.in,
                     s.out);
              ASSERT_EQ(0, std::memcmp(batched.data(), alone.data() + first * s.out,
                                       sizeof(float) * rows * s.out))
                  << name << " " << dtype_name(dtype) << " (bf16 GEMV " << bf16_gemv_name(mode)
                  << ") rows " << rows << " in " << s.in << " out " << s.out;
              ++compared;
            }
          }
        }
      EXPECT_GT(compared, 0);
      use_bf16_gemv(Bf16Gemv::kSplit);
    }
  }
  use_kernels("auto");
}

// Row invariance of the GEMM (ops::GemmRowsScope, the server's prompt passes): for every
// kernel set and weight format, inside the scope each row of a call of 2 to 70 rows (across
// the GEMV's 16-row limit and the GEMM's blocks of rows) is bitwise the row computed alone (a
// call of one row, padded with zero rows to the GEMM); outside the scope nothing changes.
TEST(FastKernels, GemmRowsAreBitwiseTheSameAloneOrBatched) {
  std::mt19937 rng(29);
  constexpr int64_t kRows = 70;
  struct Shape {
    int64_t in, out;
  };
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (const DType dtype :
         {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_1, DType::Q4_1_128}) {
      const bool quantized = dtype_block(dtype) > 1;
      const std::vector<Shape> shapes = quantized
                                            ? std::vector<Shape>{{128, 13}, {640, 7}}
                                            : std::vector<Shape>{{33, 67}, {1030, 7}, {64, 1}};
      int64_t compared = 0;
      for (const Shape& s : shapes) {
        const std::vector<float> x = random_vector(rng, kRows * s.in);  // [kRows, in]
        const std::vector<float> w = random_vector(rng, s.out * s.in);  // [out, in]
        const std::vector<float> bias = random_vector(rng, s.out);      // [out]
        const std::vector<uint8_t> stored = stored_weights(w, dtype, s.out, s.in);
        // Outside the scope one row takes the GEMV: kept to check the scope ends.
        std::vector<float> gemv_row(s.out);
        linear(x.data(), stored.data(), dtype, bias.data(), gemv_row.data(), 1, s.in, s.out);
        {
          GemmRowsScope scope;
          ASSERT_TRUE(gemm_rows_forced());
          std::vector<float> alone(kRows * s.out);  // [kRows, out]
          for (int64_t r = 0; r < kRows; ++r)
            linear(x.data() + r * s.in, stored.data(), dtype, bias.data(), alone.data() + r * s.out,
                   1, s.in, s.out);
          for (const int64_t rows : {2, 5, 16, 17, 31, 64, 65, 70}) {
            const int64_t first = (rows * 7) % (kRows - rows + 1);
            std::vector<float> batched(rows * s.out);  // [rows, out]
            linear(x.data() + first * s.in, stored.data(), dtype, bias.data(), batched.data(), rows,
                   s.in, s.out);
            ASSERT_EQ(0, std::memcmp(batched.data(), alone.data() + first * s.out,
                                     sizeof(float) * rows * s.out))
                << name << " " << dtype_name(dtype) << " rows " << rows << " in " << s.in << " out "
                << s.out;
            ++compared;
          }
        }
        EXPECT_FALSE(gemm_rows_forced());
        std::vector<float> again(s.out);
        linear(x.data(), stored.data(), dtype, bias.data(), again.data(), 1, s.in, s.out);
        EXPECT_EQ(0, std::memcmp(again.data(), gemv_row.data(), sizeof(float) * s.out)) << name;
      }
      EXPECT_GT(compared, 0);
    }
  }
  use_kernels("auto");
}

// The AVX-512 bf16 GEMV (1 to 16 rows) in each mode against the reference kernel on the
// activations as the mode takes them (only the summation order differs: same bound as
// every fast linear kernel), and the error its rounding of x adds against f32 activations
// (printed; bounded for the default split mode, whose two parts keep about 16 bits).
TEST(FastKernels, Bf16GemvModesMatchTheReference) {
  const std::vector<std::string> sets = available_kernels();
  if (std::find(sets.begin(), sets.end(), "avx512") == sets.end())
    GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  use_kernels("avx512");
  const std::vector<LinearCase> cases = {{1, 1, 1},    {1, 31, 3},   {2, 32, 5},   {3, 33, 13},
                                         {4, 64, 7},   {5, 95, 9},   {6, 100, 17}, {7, 2048, 9},
                                         {8, 1030, 6}, {9, 513, 11}, {12, 64, 5},  {16, 2049, 7},
                                         {15, 47, 6},  {16, 1, 4}};
  std::mt19937 rng(31);
  for (const Bf16Gemv mode : {Bf16Gemv::kSplit, Bf16Gemv::kRounded, Bf16Gemv::kWiden}) {
    use_bf16_gemv(mode);
    double worst = 0.0, worst_vs_f32 = 0.0;
    for (const LinearCase& c : cases) {
      const std::vector<float> x = random_vector(rng, c.rows * c.in);  // [rows, in]
      const std::vector<float> w = random_vector(rng, c.out * c.in);   // [out, in]
      const std::vector<float> bias = random_vector(rng, c.out);       // [out]
      const std::vector<uint32_t> stored = weights_of(w, DType::BF16);
      std::vector<float> got(c.rows * c.out), want(c.rows * c.out), exact(c.rows * c.out);
      linear(x.data(), stored.data(), DType::BF16, bias.data(), got.data(), c.rows, c.in, c.out);
      std::vector<float> x_mode = x;
      for (float& v : x_mode) v = bf16_gemv_input(v, mode);
      linear_reference(x_mode.data(), stored.data(), DType::BF16, bias.data(), want.data(), c.rows,
                       c.in, c.out);
      linear_reference(x.data(), stored.data(), DType::BF16, bias.data(), exact.data(), c.rows,
                       c.in, c.out);
      const double scale = std::sqrt(static_cast<double>(c.in));
      const double err = max_relative_error(got, want) / scale;
      worst = std::max(worst, err);
      worst_vs_f32 = std::max(worst_vs_f32, max_relative_error(got, exact) / scale);
      EXPECT_LE(err, 2e-6) << bf16_gemv_name(mode) << " rows " << c.rows << " in " << c.in
                           << " out " << c.out;
    }
    std::cout << "avx512 bf16 GEMV " << bf16_gemv_name(mode)
              << ": max |err| / (1 + |y|) / sqrt(in) vs the reference on its inputs " << worst
              << ", vs f32 inputs " << worst_vs_f32 << std::endl;
    if (mode != Bf16Gemv::kRounded) {
      EXPECT_LE(worst_vs_f32, 1e-5) << bf16_gemv_name(mode);
    }
  }
  use_bf16_gemv(Bf16Gemv::kSplit);
  use_kernels("auto");
}

TEST(FastKernels, Bf16GemvModesByName) {
  for (const Bf16Gemv mode : {Bf16Gemv::kSplit, Bf16Gemv::kRounded, Bf16Gemv::kWiden}) {
    EXPECT_EQ(bf16_gemv_named(bf16_gemv_name(mode)), mode);
    use_bf16_gemv(mode);
    EXPECT_EQ(bf16_gemv(), mode);
  }
  use_bf16_gemv(Bf16Gemv::kSplit);
  try {
    bf16_gemv_named("bf8");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KILN_BF16_GEMV=bf8"), std::string::npos) << e.what();
  }
}

TEST(FastKernels, GemmF32MatchesReferenceInBothLayoutsAndWhenAccumulating) {
  // ops::gemm_f32 (training's backward products): a as [rows, depth] or [depth, rows], y
  // overwritten or added to. Shapes cross the 64-row blocks, the 256-row chunks and the
  // 512-deep passes.
  const std::vector<LinearCase> cases = {{1, 1, 1},     {3, 7, 5},     {16, 33, 17},
                                         {65, 513, 7},  {300, 96, 11}, {257, 1030, 19},
                                         {40, 2049, 6}, {130, 17, 64}};
  std::mt19937 rng(13);
  for (const std::string& name : fast_kernel_sets()) {
    use_kernels(name);
    double worst = 0.0;
    for (const LinearCase& c : cases) {
      const std::vector<float> a = random_vector(rng, c.rows * c.in);  // [rows, depth]
      std::vector<float> at(c.in * c.rows);                            // [depth, rows]
      for (int64_t j = 0; j < c.rows; ++j)
        for (int64_t k = 0; k < c.in; ++k) at[k * c.rows + j] = a[j * c.in + k];
      const std::vector<float> w = random_vector(rng, c.out * c.in);  // [out, depth]
      std::vector<float> wt(c.in * c.out);                            // [depth, out]
      for (int64_t o = 0; o < c.out; ++o)
        for (int64_t k = 0; k < c.in; ++k) wt[k * c.out + o] = w[o * c.in + k];
      const std::vector<float> start = random_vector(rng, c.rows * c.out);  // [rows, out]
      for (const bool transposed : {false, true}) {
        for (const bool accumulate : {false, true}) {
          std::vector<float> got = start, want = start, got_wt = start, want_wt = start;
          const float* operand = transposed ? at.data() : a.data();
          gemm_f32(operand, transposed, w.data(), false, got.data(), c.rows, c.in, c.out,
                   accumulate);
          gemm_f32_reference(operand, transposed, w.data(), false, want.data(), c.rows, c.in, c.out,
                             accumulate);
          // The weight stored transposed: bitwise the same sums, reference and fast.
          gemm_f32(operand, transposed, wt.data(), true, got_wt.data(), c.rows, c.in, c.out,
                   accumulate);
          gemm_f32_reference(operand, transposed, wt.data(), true, want_wt.data(), c.rows, c.in,
                             c.out, accumulate);
          EXPECT_EQ(got_wt, got) << name << " rows " << c.rows << " depth " << c.in;
          EXPECT_EQ(want_wt, want) << name << " rows " << c.rows << " depth " << c.in;
          const double err = max_relative_error(got, want) / std::sqrt(static_cast<double>(c.in));
          worst = std::max(worst, err);
          // (Depths reach 2049, which the reference sums in one f32 accumulator.)
          EXPECT_LE(err, 5e-6) << name << " rows " << c.rows << " depth " << c.in << " out "
                               << c.out << " transposed " << transposed << " accumulate "
                               << accumulate;
        }
      }
    }
    std::cout << name << " gemm_f32: max |err| / (1 + |y|) / sqrt(depth) = " << worst << std::endl;
    // Bitwise the same for any thread count: 5 row blocks are split by rows on 1 and 2
    // threads and by weight rows on 3.
    const int64_t rows = 300, depth = 530, out = 70;
    const std::vector<float> a = random_vector(rng, rows * depth),
                             w = random_vector(rng, out * depth);
    std::vector<std::vector<float>> results;
    const int saved = omp_get_max_threads();
    for (const int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      for (const bool transposed : {false, true}) {
        results.emplace_back(rows * out, 0.5f);
        gemm_f32(a.data(), transposed, w.data(), false, results.back().data(), rows, depth, out,
                 true);
      }
    }
    omp_set_num_threads(saved);
    for (size_t i = 2; i < results.size(); ++i)
      EXPECT_EQ(results[i], results[i % 2]) << name << ": run " << i;
  }
  use_kernels("auto");
}

TEST(FastKernels, AttentionMatchesReferenceForEveryShape) {
  std::mt19937 rng(5);
  for (const std::string& name : fast_kernel_sets()) {
    double worst = 0.0;
    for (int k = 0; k < 40; ++k) {
      AttentionShape s;
      s.batch = 1 + rng() % 2;
      s.tokens = k % 3 == 0 ? 1 : 1 + rng() % 40;
      s.start = rng() % 3 == 0 ? 0 : rng() % 30;
      s.cache_len = s.start + s.tokens;
      s.cache_max = s.cache_len + rng() % 5;
      s.kv_heads = 1 + rng() % 3;
      s.heads = s.kv_heads * (1 + rng() % 5);
      const int64_t dims[] = {1, 4, 16, 17, 33, 64};
      s.head_dim = dims[rng() % 6];
      s.value_dim = k % 4 == 0 ? dims[rng() % 6] : s.head_dim;
      s.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
      s.window = k % 5 == 0 ? 1 + rng() % 8 : 0;
      s.chunk = k % 3 == 1 ? 1 + rng() % 12 : 0;  // chunked local attention (Llama 4)
      s.softcap = k % 7 == 0 ? 5.0f : 0.0f;
      const std::vector<float> q =
          random_vector(rng, s.batch * s.tokens * s.heads * s.head_dim);  // [B, T, Hq, D]
      const std::vector<float> keys =
          random_vector(rng, s.batch * s.cache_max * s.kv_heads * s.head_dim);  // [B, S, Hkv, D]
      const std::vector<float> values =
          random_vector(rng, s.batch * s.cache_max * s.kv_heads * s.value_dim);  // [B, S, Hkv, Dv]
      // Every third case with attention sinks, drawn from their own generator so that the
      // other cases stay as they were.
      std::mt19937 sink_rng(static_cast<unsigned>(k));
      const std::vector<float> sinks = random_vector(sink_rng, s.heads);  // [Hq]
      if (k % 3 == 1) s.sinks = sinks.data();
      std::vector<float> got(s.batch * s.tokens * s.heads * s.value_dim);  // [B, T, Hq, Dv]
      std::vector<float> want(got.size());
      use_kernels(name);
      causal_attention(q.data(), keys.data(), values.data(), got.data(), s);
      causal_attention_reference(q.data(), keys.data(), values.data(), want.data(), s);
      const double err = max_relative_error(got, want);
      worst = std::max(worst, err);
      EXPECT_LE(err, 1e-5) << name << " case " << k;
    }
    std::cout << name << " attention: max |err| / (1 + |out|) = " << worst << std::endl;
  }
  use_kernels("auto");
}

TEST(FastKernels, SiluGatedMatchesReference) {
  std::mt19937 rng(9);
  for (const std::string& name : fast_kernel_sets()) {
    use_kernels(name);
    double worst = 0.0;
    for (const int64_t count : {1, 7, 16, 33, 1000, 300000}) {
      std::vector<float> gate = random_vector(rng, count), up = random_vector(rng, count);
      for (size_t i = 0; i < gate.size(); i += 97) gate[i] *= 40.0f;  // far tails of e^x
      std::vector<float> got(count), want(count);                     // [count]
      gated_activation(Activation::kSilu, gate.data(), up.data(), got.data(), count);
      silu_gated_reference(gate.data(), up.data(), want.data(), count);
      worst = std::max(worst, max_relative_error(got, want));
    }
    std::cout << name << " silu_gated: max |err| / (1 + |y|) = " << worst << std::endl;
    EXPECT_LE(worst, 1e-6) << name;
  }
  use_kernels("auto");
}

TEST(FastKernels, SiluGatedBackwardMatchesReference) {
  std::mt19937 rng(21);
  for (const std::string& name : fast_kernel_sets()) {
    use_kernels(name);
    double worst = 0.0;
    for (const int64_t count : {1, 7, 16, 33, 1000, 300000}) {
      std::vector<float> gate = random_vector(rng, count), up = random_vector(rng, count),
                         dy = random_vector(rng, count);
      for (size_t i = 0; i < gate.size(); i += 97) gate[i] *= 40.0f;  // far tails of e^x
      const std::vector<float> start = random_vector(rng, count);     // added to
      std::vector<float> got_gate = start, got_up = start, want_gate = start, want_up = start;
      silu_gated_backward(gate.data(), up.data(), dy.data(), got_gate.data(), got_up.data(), count);
      silu_gated_backward_reference(gate.data(), up.data(), dy.data(), want_gate.data(),
                                    want_up.data(), count);
      worst = std::max(
          {worst, max_relative_error(got_gate, want_gate), max_relative_error(got_up, want_up)});
      // Either output alone: the other stays untouched.
      std::vector<float> only_up = start;
      silu_gated_backward(gate.data(), up.data(), dy.data(), nullptr, only_up.data(), count);
      EXPECT_EQ(only_up, got_up) << name << " count " << count;
    }
    std::cout << name << " silu_gated_backward: max |err| / (1 + |y|) = " << worst << std::endl;
    EXPECT_LE(worst, 1e-6) << name;
  }
  use_kernels("auto");
}

TEST(FastKernels, AttentionProbsMatchReference) {
  std::mt19937 rng(31);
  for (const std::string& name : fast_kernel_sets()) {
    use_kernels(name);
    double worst = 0.0;
    for (const int64_t cols : {1, 7, 16, 33, 64, 200}) {
      const int64_t rows = 5;
      std::vector<int64_t> begin(rows), end(rows);
      for (int64_t i = 0; i < rows; ++i) {  // visible windows of every kind, the last all
        begin[i] = i == rows - 1 ? 0 : static_cast<int64_t>(rng() % cols);
        end[i] =
            i == rows - 1 ? cols : begin[i] + 1 + static_cast<int64_t>(rng() % (cols - begin[i]));
      }
      std::vector<float> scores = random_vector(rng, rows * cols),
                         dp = random_vector(rng, rows * cols);
      for (float& x : scores) x *= 8.0f;
      std::vector<float> got = scores, want = scores, got_stats(2 * rows), want_stats(2 * rows);
      attention_probs(got.data(), rows, cols, begin.data(), end.data(), got_stats.data());
      attention_probs_reference(want.data(), rows, cols, begin.data(), end.data(),
                                want_stats.data());
      worst = std::max(
          {worst, max_relative_error(got, want), max_relative_error(got_stats, want_stats)});
      for (int64_t i = 0; i < rows; ++i) {  // zeros outside the visible columns
        for (int64_t j = 0; j < cols; ++j)
          if (j < begin[i] || j >= end[i]) {
            EXPECT_EQ(got[i * cols + j], 0.0f) << name;
          }
      }
      // The backward from the same scores and the reference's statistics.
      std::vector<float> got_p = scores, want_p = scores, got_ds = dp, want_ds = dp;
      attention_probs_backward(got_p.data(), got_ds.data(), rows, cols, begin.data(), end.data(),
                               want_stats.data(), 0.3f);
      attention_probs_backward_reference(want_p.data(), want_ds.data(), rows, cols, begin.data(),
                                         end.data(), want_stats.data(), 0.3f);
      worst = std::max({worst, max_relative_error(got_p, want_p), max_relative_error(got_p, want),
                        max_relative_error(got_ds, want_ds)});
    }
    std::cout << name << " attention_probs (+ backward): max |err| / (1 + |y|) = " << worst
              << std::endl;
    EXPECT_LE(worst, 1e-6) << name;
  }
  use_kernels("auto");
}

TEST(FastKernels, AdamWMatchesReference) {
  std::mt19937 rng(32);
  for (const std::string& name : fast_kernel_sets()) {
    use_kernels(name);
    double worst = 0.0;
    for (const int64_t n : {1, 7, 16, 33, 5000}) {
      const std::vector<float> w = random_vector(rng, n), g = random_vector(rng, n),
                               m = random_vector(rng, n);
      std::vector<float> v = random_vector(rng, n);
      for (float& x : v) x = x * x;
      AdamWScalars s;
      s.clip = 0.7f;
      s.decay = 0.999f;
      s.beta1 = 0.9f;
      s.beta2 = 0.95f;
      s.step_size = 1e-3f;
      s.bias_correction2_sqrt = 0.3f;
      std::vector<float> gw = w, gm = m, gv = v, rw = w, rm = m, rv = v;
      adamw_update(gw.data(), g.data(), gm.data(), gv.data(), n, s);
      adamw_update_reference(rw.data(), g.data(), rm.data(), rv.data(), n, s);
      worst = std::max({worst, max_relative_error(gw, rw), max_relative_error(gm, rm),
                        max_relative_error(gv, rv)});
      EXPECT_NE(gw, w) << name;  // it moved
    }
    std::cout << name << " adamw_update: max |err| / (1 + |y|) = " << worst << std::endl;
    EXPECT_LE(worst, 1e-6) << name;
  }
  use_kernels("auto");
}

TEST(FastKernels, UnknownKernelSetIsRejected) {
  EXPECT_THROW(use_kernels("avx9000"), Error);
  EXPECT_EQ(available_kernels().front(), "reference");
  use_kernels("reference");
  EXPECT_STREQ(active_kernels().name, "reference");
  use_kernels("auto");
  EXPECT_STREQ(active_kernels().name, available_kernels().back().c_str());
}

}  // namespace
}  // namespace kiln::ops
