#include "kiln/ops/linear.h"

#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/quant.h"
#include "kiln/ops/kernels.h"
#include "kiln/ops/top_k.h"

namespace kiln::ops {
namespace {

TEST(Linear, MatchesDoublePrecisionForEveryWeightDtype) {
  const int64_t rows = 3, in = 37, out = 11;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(rows * in), w(out * in), bias(out);  // [rows, in], [out, in], [out]
  for (float& v : x) v = normal(rng);
  for (float& v : bias) v = normal(rng);
  // Weights exactly representable in bf16 and f16, so every dtype computes the same thing.
  for (float& v : w) v = bf16_to_f32(f32_to_bf16(std::round(normal(rng) * 64.0f) / 64.0f));
  std::vector<uint16_t> w_bf16(w.size()), w_f16(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w_bf16[i] = f32_to_bf16(w[i]);
    w_f16[i] = f32_to_f16(w[i]);
  }
  std::vector<double> expected(rows * out);  // [rows, out]
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double sum = bias[o];
      for (int64_t i = 0; i < in; ++i) sum += static_cast<double>(x[n * in + i]) * w[o * in + i];
      expected[n * out + o] = sum;
    }
  const std::pair<DType, const void*> variants[] = {
      {DType::F32, w.data()}, {DType::BF16, w_bf16.data()}, {DType::F16, w_f16.data()}};
  for (const auto& [dtype, weight] : variants) {
    std::vector<float> y(rows * out);  // [rows, out]
    linear(x.data(), weight, dtype, bias.data(), y.data(), rows, in, out);
    double worst = 0.0;
    for (size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(y[i] - expected[i]));
    std::cout << dtype_name(dtype) << " max abs err = " << worst << std::endl;
    EXPECT_LE(worst, 1e-4) << dtype_name(dtype);
  }
}

TEST(Linear, WithoutBiasAndRejectsIntegerWeights) {
  const std::vector<float> x = {1, 2};         // [1, 2]
  const std::vector<float> w = {1, 0, 3, -1};  // [2, 2]
  std::vector<float> y(2);                     // [1, 2]
  linear(x.data(), w.data(), DType::F32, nullptr, y.data(), 1, 2, 2);
  EXPECT_EQ(y, (std::vector<float>{1, 1}));
  const std::vector<int32_t> iw(4);
  EXPECT_THROW(linear(x.data(), iw.data(), DType::I32, nullptr, y.data(), 1, 2, 2), Error);
}

// linear_refine_top: a Q8_0 copy's logits with each row's top k recomputed from the bf16
// table give exactly the table's values there (and its argmax), the rest untouched; rows
// refine alone as together; on every kernel set.
TEST(Linear, RefineTopRecomputesTheLargestOutputsFromTheExactWeight) {
  const int64_t rows = 3, in = 256, out = 1000, k = 16;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(rows * in), w(out * in);  // [rows, in], [out, in]
  for (float& v : x) v = normal(rng);
  std::vector<uint16_t> table(out * in);  // bf16 [out, in]
  for (size_t i = 0; i < w.size(); ++i) {
    table[i] = f32_to_bf16(normal(rng) * 0.05f);
    w[i] = bf16_to_f32(table[i]);
  }
  std::vector<std::byte> copy(out * dtype_nbytes(DType::Q8_0, in));  // Q8_0 [out, in]
  for (int64_t o = 0; o < out; ++o)
    quantize_row(DType::Q8_0, w.data() + o * in, copy.data() + o * dtype_nbytes(DType::Q8_0, in),
                 in);
  for (const std::string& kernels : available_kernels()) {
    use_kernels(kernels);
    std::vector<float> exact(rows * out), approx(rows * out);  // [rows, out]
    for (int64_t n = 0; n < rows; ++n)  // one row per call: the GEMV, as the refinement runs
      linear(x.data() + n * in, table.data(), DType::BF16, nullptr, exact.data() + n * out, 1, in,
             out);
    linear(x.data(), copy.data(), DType::Q8_0, nullptr, approx.data(), rows, in, out);
    // Row 0: the copy's two largest swapped, so that its argmax is wrong.
    std::vector<int64_t> order(2);
    top_k(exact.data(), out, 2, order.data());
    approx[order[1]] = exact[order[0]] + 1.0f;
    std::vector<float> refined = approx;
    linear_refine_top(x.data(), weight_view(table.data(), DType::BF16, in), refined.data(), rows,
                      in, out, k);
    double approx_error = 0.0;
    for (int64_t n = 0; n < rows; ++n) {
      std::vector<int64_t> top(k);
      top_k(approx.data() + n * out, out, k, top.data());
      int64_t replaced = 0;
      for (int64_t o = 0; o < out; ++o) {
        const bool chosen = std::find(top.begin(), top.end(), o) != top.end();
        const float want = chosen ? exact[n * out + o] : approx[n * out + o];
        replaced += chosen;
        EXPECT_EQ(refined[n * out + o], want) << kernels << " row " << n << " output " << o;
        if (!(n == 0 && o == order[1]))
          approx_error =
              std::max(approx_error,
                       static_cast<double>(std::fabs(approx[n * out + o] - exact[n * out + o])));
      }
      EXPECT_EQ(replaced, k);
      EXPECT_EQ(argmax(refined.data() + n * out, out), argmax(exact.data() + n * out, out))
          << kernels << " row " << n;
    }
    EXPECT_NE(argmax(approx.data(), out), order[0]);
    std::cout << kernels << ": Q8_0 copy's largest logit error " << approx_error << ", refined top "
              << k << " exact" << std::endl;
    EXPECT_GT(approx_error, 0.0);
    // Each row alone as in the batch; k = 0 changes nothing; k > out refines every output.
    for (int64_t n = 0; n < rows; ++n) {
      std::vector<float> alone(approx.begin() + n * out, approx.begin() + (n + 1) * out);
      linear_refine_top(x.data() + n * in, weight_view(table.data(), DType::BF16, in), alone.data(),
                        1, in, out, k);
      for (int64_t o = 0; o < out; ++o) ASSERT_EQ(alone[o], refined[n * out + o]) << kernels;
    }
    std::vector<float> same = approx;
    linear_refine_top(x.data(), weight_view(table.data(), DType::BF16, in), same.data(), rows, in,
                      out, 0);
    EXPECT_EQ(same, approx);
    const int64_t few = 10;
    std::vector<float> all = approx;  // the first `few` outputs only
    linear_refine_top(x.data(), weight_view(table.data(), DType::BF16, in), all.data(), 1, in, few,
                      kRefineMaxOutputs);
    for (int64_t o = 0; o < few; ++o) EXPECT_EQ(all[o], exact[o]) << kernels;
  }
  use_kernels("auto");
  std::vector<float> y(out);
  try {
    linear_refine_top(x.data(), weight_view(table.data(), DType::BF16, in), y.data(), 1, in, out,
                      kRefineMaxOutputs + 1);
    ADD_FAILURE() << "no error for too many outputs";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refining 65 outputs"), std::string::npos) << e.what();
  }
}

// linear_group gives each product bitwise what linear() gives it alone, in every kernel set,
// for one row (one parallel region, threads splitting all products' outputs) and for several.
TEST(Linear, GroupIsBitwiseLinearPerProduct) {
  const int64_t in = 1024;
  const int64_t outs[] = {520, 131, 129};  // 780 * 1024 multiply-adds: threads are used
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(3 * in);  // [3, in]
  for (float& v : x) v = normal(rng);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  for (const std::string& set : available_kernels()) {
    use_kernels(set);
    for (const DType format : {DType::F32, DType::BF16, DType::Q8_0, DType::Q4_1}) {
      std::vector<std::vector<uint8_t>> weights;
      std::vector<std::vector<float>> biases;
      std::vector<LinearProduct> products;
      std::vector<std::vector<float>> together(3), alone(3);
      for (int k = 0; k < 3; ++k) {
        std::vector<float> w(outs[k] * in), bias(outs[k]);
        for (float& v : w) v = normal(rng);
        for (float& v : bias) v = normal(rng);
        std::vector<uint8_t> stored(outs[k] * dtype_nbytes(format, in));
        for (int64_t o = 0; o < outs[k]; ++o) {
          uint8_t* row = stored.data() + o * dtype_nbytes(format, in);
          if (format == DType::F32) std::memcpy(row, w.data() + o * in, sizeof(float) * in);
          if (format == DType::BF16)
            for (int64_t i = 0; i < in; ++i) {
              const uint16_t h = f32_to_bf16(w[o * in + i]);
              std::memcpy(row + 2 * i, &h, 2);
            }
          if (format == DType::Q8_0 || format == DType::Q4_1)
            quantize_row(format, w.data() + o * in, row, in);
        }
        weights.push_back(std::move(stored));
        biases.push_back(std::move(bias));
      }
      for (const int64_t rows : {int64_t{1}, int64_t{3}}) {
        products.clear();
        for (int k = 0; k < 3; ++k) {
          together[k].assign(rows * outs[k], 0.0f);
          alone[k].assign(rows * outs[k], 0.0f);
          // (the first product without a bias)
          const float* bias = k == 0 ? nullptr : biases[k].data();
          products.push_back(
              {weight_view(weights[k].data(), format, in), bias, together[k].data(), outs[k]});
          linear(x.data(), weights[k].data(), format, bias, alone[k].data(), rows, in, outs[k]);
        }
        linear_group(x.data(), rows, in, products.data(), 3);
        for (int k = 0; k < 3; ++k)
          for (int64_t i = 0; i < rows * outs[k]; ++i)
            ASSERT_EQ(together[k][i], alone[k][i]) << set << " " << dtype_name(format) << " rows "
                                                   << rows << " product " << k << " element " << i;
      }
    }
  }
  use_kernels("auto");
  omp_set_num_threads(threads);
}

TEST(Linear, GroupRejectsAViewOfAnotherWidth) {
  std::vector<float> x(64), w(2 * 64), y(2);
  const LinearProduct product{weight_view(w.data(), DType::F32, 32), nullptr, y.data(), 2};
  EXPECT_THROW(linear_group(x.data(), 1, 64, &product, 1), Error);
}

}  // namespace
}  // namespace kiln::ops
