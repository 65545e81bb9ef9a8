// The linear kernels of every quantized weight format in every kernel set this CPU runs,
// against the reference kernel on the same stored blocks: the integer GEMV (few rows) and
// the integer GEMM (16 rows or more), both on int8 activations, against the reference on the
// activations they round to, to float rounding; and both against the unquantized product
// within the quantization error (weights and activations).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/kquant.h"
#include "kiln/core/quant.h"
#include "kiln/ops/kernels.h"
#include "kiln/ops/linear.h"
#include "test_util.h"

namespace kiln::ops {
namespace {

using test::random_vector;

struct Case {
  int64_t rows, in, out;
};

// max |got - want| / (1 + sum_i |x_i w_i|) over outputs: the error relative to the size of
// the terms summed.
double scaled_error(const std::vector<float>& got, const std::vector<float>& want,
                    const std::vector<float>& magnitude) {
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i)
    worst = std::max(worst, std::fabs(got[i] - want[i]) / (1.0 + magnitude[i]));
  return worst;
}

// x as the kernel set `name` computes on it: every row rounded per block of 32 to int8 and
// back (the reference set takes x as it is).
std::vector<float> as_kernels_see_it(const std::string& name, std::vector<float> x, int64_t rows,
                                     int64_t in) {
  if (name != "reference")
    for (int64_t r = 0; r < rows; ++r) round_activations(x.data() + r * in, in);
  return x;
}

// The f64 products x w^T + bias ([rows, out], bias may be null) and the sizes of their terms
// sum_i |x_i w_i|, as floats.
void f64_products(const std::vector<float>& x, const std::vector<float>& w, const float* bias,
                  int64_t rows, int64_t in, int64_t out, std::vector<float>& exact,
                  std::vector<float>& magnitude) {
  exact.assign(rows * out, 0.0f);
  magnitude.assign(rows * out, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double sum = bias ? bias[o] : 0.0, size = 0.0;
      for (int64_t i = 0; i < in; ++i) {
        const double term = static_cast<double>(x[r * in + i]) * w[o * in + i];
        sum += term;
        size += std::fabs(term);
      }
      exact[r * out + o] = static_cast<float>(sum);
      magnitude[r * out + o] = static_cast<float>(size);
    }
}

TEST(QuantKernels, EveryKernelSetMatchesTheReferenceForEveryFormat) {
  const std::vector<Case> cases = {{1, 32, 1},
                                   {1, 128, 7},
                                   {2, 256, 33},
                                   {3, 384, 5},
                                   {4, 128, 16},
                                   {5, 640, 9},
                                   {7, 512, 31},
                                   {8, 1024, 13},
                                   {15, 256, 17},
                                   {16, 128, 6},
                                   {17, 640, 7},
                                   {40, 1152, 19},
                                   {70, 256, 13},
                                   {257, 512, 9},
                                   {1, 2048, 64},
                                   // blocks not in whole pairs, quads or groups of 16
                                   {2, 224, 5},
                                   {3, 1120, 7},
                                   {4, 2080, 3},
                                   {1, 96, 2},
                                   {24, 1120, 11}};
  std::mt19937 rng(21);
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (const DType format : {DType::Q8_0, DType::Q4_1, DType::Q4_1_128}) {
      double worst_gemv = 0.0, worst_gemm = 0.0, worst_quantization = 0.0;
      for (const Case& c : cases) {
        if (c.in % dtype_block(format) != 0) continue;
        const std::vector<float> x = random_vector(rng, c.rows * c.in);  // [rows, in]
        const std::vector<float> w = random_vector(rng, c.out * c.in);   // [out, in]
        const std::vector<float> bias = random_vector(rng, c.out);       // [out]
        std::vector<uint8_t> stored(c.out * dtype_nbytes(format, c.in));
        for (int64_t o = 0; o < c.out; ++o)
          quantize_row(format, w.data() + o * c.in, stored.data() + o * dtype_nbytes(format, c.in),
                       c.in);
        std::vector<float> got(c.rows * c.out), want(c.rows * c.out);  // [rows, out]
        linear(x.data(), stored.data(), format, bias.data(), got.data(), c.rows, c.in, c.out);
        // The fast sets (GEMV and GEMM) compute on int8 activations.
        const std::vector<float> x_ref = as_kernels_see_it(name, x, c.rows, c.in);
        linear_reference(x_ref.data(), stored.data(), format, bias.data(), want.data(), c.rows,
                         c.in, c.out);
        // Unquantized product and term sizes.
        std::vector<float> exact, magnitude;
        f64_products(x, w, bias.data(), c.rows, c.in, c.out, exact, magnitude);
        const double e = scaled_error(got, want, magnitude);
        double& worst = c.rows <= kGemvMaxRows ? worst_gemv : worst_gemm;
        worst = std::max(worst, e);
        EXPECT_LT(e, 2e-6) << name << " " << dtype_name(format) << " rows " << c.rows << " in "
                           << c.in << " out " << c.out;
        worst_quantization = std::max(worst_quantization, scaled_error(got, exact, magnitude));
      }
      std::cout << name << " " << dtype_name(format)
                << ": max error vs reference (scaled by sum |x w|) GEMV " << worst_gemv << ", GEMM "
                << worst_gemm << "; vs unquantized " << worst_quantization << std::endl;
      // int8 weights carry about 1/254 of each block's range as error, int4 about 1/30.
      EXPECT_LT(worst_quantization, format == DType::Q8_0 ? 0.02 : 0.12) << name;
    }
  }
  use_kernels("auto");
}

// A decode row's result does not depend on the rows that share the call (the server's
// batched decode promises each sequence the same tokens as alone), in every kernel set; `in`
// covers the 8- and 16-block groups of the fast GEMVs and blocks after them.
TEST(QuantKernels, GemvRowsAreIndependentOfTheirNeighbours) {
  std::mt19937 rng(5);
  for (const int64_t in : {int64_t{256}, int64_t{1152}}) {
    const int64_t out = 24;
    const std::vector<float> x = random_vector(rng, 15 * in);
    const std::vector<float> w = random_vector(rng, out * in);
    for (const std::string& name : available_kernels()) {
      use_kernels(name);
      for (const DType format : {DType::Q8_0, DType::Q4_1, DType::Q4_1_128}) {
        std::vector<uint8_t> stored(out * dtype_nbytes(format, in));
        for (int64_t o = 0; o < out; ++o)
          quantize_row(format, w.data() + o * in, stored.data() + o * dtype_nbytes(format, in), in);
        std::vector<float> all(15 * out), one(out);
        linear(x.data(), stored.data(), format, nullptr, all.data(), 15, in, out);
        for (int64_t r = 0; r < 15; ++r) {
          linear(x.data() + r * in, stored.data(), format, nullptr, one.data(), 1, in, out);
          for (int64_t o = 0; o < out; ++o)
            ASSERT_EQ(one[o], all[r * out + o]) << name << " " << dtype_name(format) << " " << r;
        }
      }
    }
  }
  use_kernels("auto");
}

// Rows of random K-quant super-blocks or Q4_0 blocks (every byte random, so every level,
// scale and minimum code occurs; f16 (super-)scales set so the values are of order 1): Kiln
// does not quantize into these formats, it reads them from GGUF files.
std::vector<uint8_t> random_kquant_rows(std::mt19937& rng, DType format, int64_t out, int64_t in) {
  std::vector<uint8_t> stored(out * dtype_nbytes(format, in));
  for (uint8_t& b : stored) b = static_cast<uint8_t>(rng() & 255);
  std::uniform_real_distribution<float> scale(0.5f, 1.5f);
  const size_t bytes = dtype_block_bytes(format);
  for (size_t at = 0; at < stored.size(); at += bytes) {
    if (format == DType::Q4_0) {  // d * (q - 8), |q - 8| up to 8; some scales negative
      const uint16_t d = f32_to_f16((rng() & 7) == 0 ? -scale(rng) / 8.0f : scale(rng) / 8.0f);
      std::memcpy(&stored[at], &d, 2);
    } else if (format == DType::Q6_K) {  // |scale * (q - 32)| up to 128 * 32
      const uint16_t d = f32_to_f16(scale(rng) / 2048.0f);
      std::memcpy(&stored[at + 208], &d, 2);
    } else {  // d * sc * q up to 63 * 31, dmin * m up to 63
      const uint16_t d = f32_to_f16(scale(rng) / (format == DType::Q4_K ? 500.0f : 1000.0f));
      const uint16_t dmin = f32_to_f16(scale(rng) / 60.0f);
      std::memcpy(&stored[at], &d, 2);
      std::memcpy(&stored[at + 2], &dmin, 2);
    }
  }
  return stored;
}

// The K-quant and Q4_0 kernels (GEMV and GEMM of every set) against the reference kernel on the
// activations they round to (per block of 32, as for Q8_0 / Q4_1), to float rounding; the
// reference itself against the f64 product of ggml's dequantized values; and every kernel
// against the f64 product on the unrounded activations within the bound their rounding sets.
TEST(QuantKernels, KQuantKernelsMatchTheReference) {
  const std::vector<Case> cases = {
      {1, 256, 1},   {1, 512, 7},   {2, 768, 33},  {3, 256, 5},    {4, 1024, 16}, {5, 256, 9},
      {7, 1280, 31}, {8, 2048, 13}, {15, 512, 17}, {16, 256, 6},   {17, 768, 7},  {40, 1280, 19},
      {70, 256, 13}, {257, 512, 9}, {1, 4096, 64}, {24, 2304, 11}, {33, 1536, 25}};
  // Q4_0 (blocks of 32) also on rows that are not whole super-blocks, nor whole 8- or
  // 16-block groups of the fast GEMVs, and on every row count 1 to 17.
  std::vector<Case> q4_0_cases = cases;
  for (const Case c : std::vector<Case>{{1, 32, 3},
                                        {2, 96, 5},
                                        {3, 224, 7},
                                        {4, 1120, 9},
                                        {5, 2080, 4},
                                        {16, 544, 6},
                                        {17, 1120, 5},
                                        {40, 608, 11},
                                        {1, 1184, 33}})
    q4_0_cases.push_back(c);
  for (int64_t rows = 1; rows <= 17; ++rows) q4_0_cases.push_back({rows, 800, 13});
  std::mt19937 rng(17);
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (const DType format : {DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q4_0}) {
      double worst_gemv = 0.0, worst_gemm = 0.0, worst_exact = 0.0, worst_rounding = 0.0;
      for (const Case& c : format == DType::Q4_0 ? q4_0_cases : cases) {
        const std::vector<float> x = random_vector(rng, c.rows * c.in);  // [rows, in]
        const std::vector<float> bias = random_vector(rng, c.out);       // [out]
        const std::vector<uint8_t> stored = random_kquant_rows(rng, format, c.out, c.in);
        std::vector<float> w(c.out * c.in);  // [out, in] ggml's values
        dequantize_row(format, stored.data(), w.data(), c.out * c.in);
        std::vector<float> got(c.rows * c.out), want(c.rows * c.out);  // [rows, out]
        linear(x.data(), stored.data(), format, bias.data(), got.data(), c.rows, c.in, c.out);
        const std::vector<float> x_ref = as_kernels_see_it(name, x, c.rows, c.in);
        linear_reference(x_ref.data(), stored.data(), format, bias.data(), want.data(), c.rows,
                         c.in, c.out);
        std::vector<float> exact, magnitude;
        f64_products(x_ref, w, bias.data(), c.rows, c.in, c.out, exact, magnitude);
        const double e = scaled_error(got, want, magnitude);
        (c.rows <= kGemvMaxRows ? worst_gemv : worst_gemm) =
            std::max(c.rows <= kGemvMaxRows ? worst_gemv : worst_gemm, e);
        EXPECT_LT(e, 2e-6) << name << " " << dtype_name(format) << " rows " << c.rows << " in "
                           << c.in << " out " << c.out;
        worst_exact = std::max(worst_exact, scaled_error(want, exact, magnitude));
        // Against the f32 activations: within what the activations' rounding can move each
        // output, sum_i |w_i| * |x_i - x_ref_i| (each |x_i - x_ref_i| at most half its block's
        // step, max|x| / 254 per 32), plus float rounding.
        std::vector<float> unrounded, unrounded_magnitude;
        f64_products(x, w, bias.data(), c.rows, c.in, c.out, unrounded, unrounded_magnitude);
        for (int64_t r = 0; r < c.rows; ++r)
          for (int64_t o = 0; o < c.out; ++o) {
            double bound = 0.0;
            for (int64_t i = 0; i < c.in; ++i)
              bound += std::fabs(static_cast<double>(w[o * c.in + i])) *
                       std::fabs(static_cast<double>(x[r * c.in + i]) - x_ref[r * c.in + i]);
            const double diff =
                std::fabs(static_cast<double>(got[r * c.out + o]) - unrounded[r * c.out + o]);
            const double allowed = bound + 2e-6 * (1.0 + unrounded_magnitude[r * c.out + o]);
            worst_rounding = std::max(worst_rounding, diff / allowed);
            EXPECT_LE(diff, allowed) << name << " " << dtype_name(format) << " rows " << c.rows;
          }
      }
      std::cout << name << " " << dtype_name(format)
                << ": max error vs reference (scaled by sum |x w|) GEMV " << worst_gemv << ", GEMM "
                << worst_gemm << "; reference vs f64 " << worst_exact
                << "; vs f32 activations, largest share of the rounding bound " << worst_rounding
                << std::endl;
      EXPECT_LT(worst_exact, 2e-6) << name;
    }
  }
  use_kernels("auto");
}

// Activations that all round to +-127 (every block's values of one magnitude, signs mixed):
// the largest integer sums the K-quant kernels meet (Q6_K's GEMV: unsigned q up to 63 times
// 127, pairs summed in int16 on AVX2, lanes started from -32 * sum(x_q)), against the
// reference on the same rounded activations.
TEST(QuantKernels, KQuantKernelsHoldFullScaleActivations) {
  std::mt19937 rng(23);
  const int64_t in = 1024, out = 9;
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (const DType format : {DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q4_0}) {
      const std::vector<uint8_t> stored = random_kquant_rows(rng, format, out, in);
      for (const int64_t rows : {1, 3, 40}) {  // GEMV, and the GEMM past kGemvMaxRows
        std::vector<float> x(rows * in);       // [rows, in]
        for (float& v : x) v = (rng() & 1) ? 1.5f : -1.5f;
        for (int64_t i = 0; i < in; i += 64) x[i] = 1.5f;  // and runs of one sign
        for (int64_t i = 0; i < in / 2; ++i) x[i] = std::fabs(x[i]);
        std::vector<float> got(rows * out), want(rows * out);
        linear(x.data(), stored.data(), format, nullptr, got.data(), rows, in, out);
        const std::vector<float> x_ref = as_kernels_see_it(name, x, rows, in);
        linear_reference(x_ref.data(), stored.data(), format, nullptr, want.data(), rows, in, out);
        std::vector<float> w(out * in);  // [out, in]
        dequantize_row(format, stored.data(), w.data(), out * in);
        std::vector<float> exact, magnitude;
        f64_products(x, w, nullptr, rows, in, out, exact, magnitude);
        const double e = scaled_error(got, want, magnitude);
        EXPECT_LT(e, 2e-6) << name << " " << dtype_name(format) << " rows " << rows;
        std::cout << name << " " << dtype_name(format) << " rows " << rows
                  << ": full-scale activations, scaled error " << e << std::endl;
      }
    }
  }
  use_kernels("auto");
}

// The same batch invariance for the K-quant and Q4_0 GEMV.
TEST(QuantKernels, KQuantGemvRowsAreIndependentOfTheirNeighbours) {
  std::mt19937 rng(9);
  const int64_t in = 512, out = 24;
  const std::vector<float> x = random_vector(rng, 16 * in);
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (const DType format : {DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q4_0}) {
      const std::vector<uint8_t> stored = random_kquant_rows(rng, format, out, in);
      for (const int64_t rows : {2, 3, 4, 5, 8, 16}) {
        std::vector<float> all(rows * out), one(out);
        linear(x.data(), stored.data(), format, nullptr, all.data(), rows, in, out);
        for (int64_t r = 0; r < rows; ++r) {
          linear(x.data() + r * in, stored.data(), format, nullptr, one.data(), 1, in, out);
          for (int64_t o = 0; o < out; ++o)
            ASSERT_EQ(one[o], all[r * out + o]) << name << " " << dtype_name(format) << " " << r;
        }
      }
    }
  }
  use_kernels("auto");
}

TEST(QuantKernels, ViewsOfPartialBlocksAreRejected) {
  std::vector<uint8_t> stored(1024);
  std::vector<float> x(48), y(2);
  EXPECT_THROW(linear(x.data(), stored.data(), DType::Q8_0, nullptr, y.data(), 1, 48, 2), Error);
  EXPECT_THROW(weight_view(stored.data(), DType::Q4_1_128, 64), Error);
  EXPECT_THROW(weight_view(stored.data(), DType::Q4_K, 128), Error);
  EXPECT_THROW(weight_view(stored.data(), DType::Q6_K, 768 + 32), Error);
  EXPECT_THROW(weight_view(stored.data(), DType::Q4_0, 48), Error);
  EXPECT_EQ(weight_view(stored.data(), DType::Q4_0, 64).row_bytes, 36u);
  EXPECT_THROW(weight_view(stored.data(), DType::I8, 64), Error);
  WeightView wrong = weight_view(stored.data(), DType::Q8_0, 64);
  wrong.row_bytes = 64;
  EXPECT_THROW(linear(x.data(), wrong, nullptr, y.data(), 1, 64, 2), Error);
}

}  // namespace
}  // namespace kiln::ops
