// ops::gemm_bf16 (mixed-precision training's GEMM) on every kernel set this CPU can run,
// against its reference (rounded operands, double sums) and against the f32 GEMM.
#include "kiln/ops/gemm_bf16.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/ops/kernels.h"
#include "kiln/ops/linear.h"
#include "test_util.h"

namespace kiln::ops {
namespace {

using test::random_vector;

std::vector<float> transposed(const std::vector<float>& m, int64_t rows, int64_t cols) {
  std::vector<float> t(m.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = m[i * cols + j];
  return t;
}

struct Shape {
  int64_t rows, depth, out;
};

// Shapes cross the tile rows (6 and 4), the output panels (64 and 16), the depth passes of
// 256 pairs, odd depths (a half-empty last pair) and the row blocks of the work items.
const std::vector<Shape> kShapes = {{1, 1, 1},     {3, 7, 5},     {16, 33, 17},
                                    {65, 513, 7},  {300, 96, 70}, {257, 1030, 19},
                                    {40, 2049, 6}, {130, 17, 64}, {7, 512, 129}};

// For every kernel set: |fast - reference| <= 2e-6 * sum_k |bf16(a) bf16(w)| per element
// (f32 sums of exact products: the reference is their exact sum, rounded once).
TEST(GemmBf16, EveryKernelSetMatchesTheReferenceInEveryLayout) {
  std::mt19937 rng(29);
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    double worst = 0.0;
    for (const Shape& c : kShapes) {
      const std::vector<float> a = random_vector(rng, c.rows * c.depth);  // [rows, depth]
      const std::vector<float> w = random_vector(rng, c.out * c.depth);   // [out, depth]
      const std::vector<float> at = transposed(a, c.rows, c.depth);       // [depth, rows]
      const std::vector<float> wt = transposed(w, c.out, c.depth);        // [depth, out]
      const std::vector<float> start = random_vector(rng, c.rows * c.out);
      // sum_k |bf16(a) bf16(w)| per element: the scale of the f32 summation error.
      std::vector<float> abs_a(a.size()), abs_w(w.size()), magnitude(start.size());
      for (size_t i = 0; i < a.size(); ++i) abs_a[i] = std::fabs(a[i]);
      for (size_t i = 0; i < w.size(); ++i) abs_w[i] = std::fabs(w[i]);
      gemm_bf16_reference(abs_a.data(), false, abs_w.data(), false, magnitude.data(), c.rows,
                          c.depth, c.out, false);
      for (const bool a_t : {false, true}) {
        for (const bool w_t : {false, true}) {
          for (const bool accumulate : {false, true}) {
            std::vector<float> got = start, want = start;
            gemm_bf16(a_t ? at.data() : a.data(), a_t, w_t ? wt.data() : w.data(), w_t, got.data(),
                      c.rows, c.depth, c.out, accumulate);
            gemm_bf16_reference(a.data(), false, w.data(), false, want.data(), c.rows, c.depth,
                                c.out, accumulate);
            double err = 0.0;
            for (size_t i = 0; i < got.size(); ++i) {
              const double scale = magnitude[i] + (accumulate ? std::fabs(start[i]) : 0.0) + 1e-30;
              err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]) / scale);
            }
            worst = std::max(worst, err);
            EXPECT_LE(err, 2e-6) << name << " rows " << c.rows << " depth " << c.depth << " out "
                                 << c.out << " a_t " << a_t << " w_t " << w_t << " accumulate "
                                 << accumulate;
          }
        }
      }
    }
    std::cout << name << " gemm_bf16 vs reference: max |err| / sum|a w| = " << worst << std::endl;
  }
  use_kernels("auto");
}

// The rounding is round-to-nearest-even of each operand, exactly as core/dtype.h's
// f32_to_bf16 (ties, NaN); against the unrounded f32 product the error is bf16's (2^-8
// relative per operand), not more.
TEST(GemmBf16, RoundsEachOperandToNearestEvenAndStaysWithinBf16OfF32) {
  // Ties: 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7 (rounds to 1, even), 1 + 3 * 2^-8
  // to 1 + 2^-6 (even); the products with 1 show the rounded operands.
  const std::vector<float> a = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-9f, -3.0f};
  const std::vector<float> one(4 * 4, 0.0f);
  std::vector<float> w(4 * 4, 0.0f);  // [out 4, depth 4]: identity
  for (int i = 0; i < 4; ++i) w[i * 4 + i] = 1.0f;
  std::mt19937 rng(3);
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    std::vector<float> y(4);
    gemm_bf16(a.data(), false, w.data(), false, y.data(), 1, 4, 4, false);
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(y[i], bf16_to_f32(f32_to_bf16(a[i]))) << name << " element " << i;
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_EQ(y[1], 1.0f + 0x1p-6f);
    // A NaN operand gives NaN.
    std::vector<float> nan_a = a;
    nan_a[2] = std::numeric_limits<float>::quiet_NaN();
    gemm_bf16(nan_a.data(), false, w.data(), false, y.data(), 1, 4, 4, false);
    EXPECT_TRUE(std::isnan(y[2])) << name;
    // Random operands: relative to sum |a w|, within 2 * 2^-9 (+ f32 sums) of the f32 GEMM.
    const int64_t rows = 96, depth = 300, out = 80;
    const std::vector<float> x = random_vector(rng, rows * depth),
                             m = random_vector(rng, out * depth);
    std::vector<float> got(rows * out), f32(rows * out), magnitude(rows * out);
    gemm_bf16(x.data(), false, m.data(), false, got.data(), rows, depth, out, false);
    gemm_f32_reference(x.data(), false, m.data(), false, f32.data(), rows, depth, out, false);
    std::vector<float> ax(x.size()), am(m.size());
    for (size_t i = 0; i < x.size(); ++i) ax[i] = std::fabs(x[i]);
    for (size_t i = 0; i < m.size(); ++i) am[i] = std::fabs(m[i]);
    gemm_f32_reference(ax.data(), false, am.data(), false, magnitude.data(), rows, depth, out,
                       false);
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - f32[i]) / magnitude[i]);
    std::cout << name << " gemm_bf16 vs f32 GEMM: max |err| / sum|a w| = " << worst << std::endl;
    EXPECT_LE(worst, 2 * 0x1p-9 + 1e-5) << name;
    EXPECT_GT(worst, 0.0) << name << ": the operands were not rounded";
  }
  use_kernels("auto");
}

// The rounding on the vector paths of the packing (full panels of tile rows, 16 pairs at a
// time, in both layouts of a): ties to even and NaN as f32_to_bf16, every word in its place.
// a [rows 12, depth 70] times the identity [70, 70] gives the rounded a back exactly.
TEST(GemmBf16, PacksWholePanelsWithTheSameRoundingAsTheScalarPath) {
  const int64_t rows = 12, depth = 70;
  std::vector<float> a(rows * depth);
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t k = 0; k < depth; ++k)  // ties (odd k), plain values and signs by position
      a[j * depth + k] =
          (k % 2 ? 1.0f + static_cast<float>(1 + 2 * (k % 5)) * 0x1p-8f
                 : 0.37f * static_cast<float>(k - 30) + 0.011f * static_cast<float>(j)) *
          (j % 3 == 1 ? -1.0f : 1.0f);
  a[5 * depth + 33] = std::numeric_limits<float>::quiet_NaN();  // row 5: all NaN
  std::vector<float> identity(depth * depth, 0.0f);
  for (int64_t k = 0; k < depth; ++k) identity[k * depth + k] = 1.0f;
  const std::vector<float> at = transposed(a, rows, depth);
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (bool a_transposed : {false, true}) {
      std::vector<float> y(rows * depth, -7.0f);
      gemm_bf16(a_transposed ? at.data() : a.data(), a_transposed, identity.data(), false, y.data(),
                rows, depth, depth, false);
      int64_t mismatches = 0;
      for (int64_t j = 0; j < rows; ++j)
        for (int64_t k = 0; k < depth; ++k) {
          const float got = y[j * depth + k];
          if (j == 5)
            mismatches += !std::isnan(got);
          else
            mismatches += got != bf16_to_f32(f32_to_bf16(a[j * depth + k]));
        }
      EXPECT_EQ(mismatches, 0) << name << (a_transposed ? " a transposed" : " a rows");
    }
  }
  use_kernels("auto");
}

// Bitwise the same for 1, 2 and 3 threads, in every layout.
TEST(GemmBf16, BitwiseTheSameForAnyThreadCount) {
  std::mt19937 rng(7);
  const int64_t rows = 300, depth = 530, out = 150;
  const std::vector<float> a = random_vector(rng, rows * depth),
                           w = random_vector(rng, out * depth);
  const int saved = omp_get_max_threads();
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    std::vector<std::vector<float>> results;
    for (const int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      for (const int layout : {0, 1, 2, 3}) {
        // (the transposed layouts read the same buffers as other shapes: only bits matter)
        results.emplace_back(rows * out, 0.5f);
        gemm_bf16(a.data(), layout & 1, w.data(), layout & 2, results.back().data(), rows, depth,
                  out, true);
      }
    }
    omp_set_num_threads(saved);
    for (size_t i = 4; i < results.size(); ++i)
      EXPECT_EQ(results[i], results[i % 4]) << name << ": run " << i;
  }
  use_kernels("auto");
}

}  // namespace
}  // namespace kiln::ops

namespace kiln::ops {
namespace {

// A weight packed once (Bf16Weight) gives bitwise what gemm_bf16 gives with w itself, for
// both layouts of w and of a; using it under another kernel set is an Error.
TEST(GemmBf16, PackedWeightGivesBitwiseTheSameProducts) {
  std::mt19937 rng(11);
  for (const std::string& name : available_kernels()) {
    use_kernels(name);
    for (const Shape& c : kShapes) {
      const std::vector<float> a = random_vector(rng, c.rows * c.depth);
      const std::vector<float> w = random_vector(rng, c.out * c.depth);
      for (const bool w_t : {false, true}) {
        const Bf16Weight packed(w.data(), w_t, c.out, c.depth);
        for (const bool a_t : {false, true}) {
          std::vector<float> got(c.rows * c.out, 0.25f), want = got;
          gemm_bf16(a.data(), a_t, packed, got.data(), c.rows, true);
          gemm_bf16(a.data(), a_t, w.data(), w_t, want.data(), c.rows, c.depth, c.out, true);
          EXPECT_EQ(got, want) << name << " rows " << c.rows << " depth " << c.depth;
        }
      }
    }
  }
  use_kernels("reference");
  const std::vector<float> w(12, 1.0f), a(12, 1.0f);
  const Bf16Weight packed(w.data(), false, 3, 4);
  std::vector<float> y(9);
  if (available_kernels().size() > 1) {
    use_kernels("auto");
    EXPECT_THROW(gemm_bf16(a.data(), false, packed, y.data(), 3, false), Error);
  }
  use_kernels("auto");
}

}  // namespace
}  // namespace kiln::ops
