#include "kiln/ops/linear.h"

#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/quant.h"
#include "kiln/ops/kernels.h"

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
