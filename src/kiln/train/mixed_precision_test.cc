// Mixed-precision training (train::set_compute_dtype(BF16), `kiln train --compute-dtype bf16`):
// tinycoder's gradients with bf16 products against its f32 gradients, on a batch of real text.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/models/loader.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/backward.h"
#include "kiln/train/train_model.h"
#include "test_util.h"

namespace kiln::train {
namespace {

std::string tinycoder() {
  return test::data_path("../../models/tinycoder");
}

// B rows of T tokens of tools/torch_reference.py (Python tinycoder was not trained on).
std::vector<int32_t> text_tokens(int64_t count) {
  std::ifstream in(test::data_path("../../tools/torch_reference.py"));
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  std::vector<int32_t> tokens = Tokenizer::load(tinycoder())->encode(text, false);
  EXPECT_GE(static_cast<int64_t>(tokens.size()), count);
  tokens.resize(static_cast<size_t>(count));
  return tokens;
}

struct GradientRun {
  double loss = 0.0;
  ParameterMap gradients;
};

GradientRun gradients_of(const LoadedModel& loaded, const std::vector<int32_t>& tokens, int64_t B,
                         int64_t T, DType dtype) {
  const ComputeDtypeScope scope(dtype);
  TrainModel train(loaded.spec, loaded.weights);
  const std::vector<int32_t> targets = next_token_targets(tokens.data(), nullptr, B, T);
  train.zero_gradients();
  GradientRun run;
  run.loss = train.forward_backward(tokens.data(), targets.data(), B, T);
  for (const auto& [name, g] : train.gradients()) run.gradients[name] = g.contiguous(true);
  return run;
}

// Bounds (bf16 keeps 8 significant bits: each operand is off by up to 2^-9 relative, and the
// errors of a sum of many products mostly cancel): per parameter tensor, the norm of the
// gradient's difference from f32 within 2e-2 of the f32 gradient's norm, and the largest
// element difference within 5e-2 of the largest f32 element; the loss within 1e-3 relative.
TEST(MixedPrecision, Bf16GradientsTrackTheF32GradientsOnTinycoder) {
  const LoadedModel loaded = load_model(tinycoder());
  const int64_t B = 2, T = 96;
  const std::vector<int32_t> tokens = text_tokens(B * T);
  const GradientRun f32 = gradients_of(loaded, tokens, B, T, DType::F32);
  const GradientRun bf16 = gradients_of(loaded, tokens, B, T, DType::BF16);
  EXPECT_EQ(compute_dtype(), DType::F32);  // the scopes restored the default
  const double loss_rel = std::abs(bf16.loss - f32.loss) / f32.loss;
  std::cout << std::setprecision(9) << "loss f32 " << f32.loss << ", bf16 products " << bf16.loss
            << " (relative difference " << loss_rel << ")" << std::endl;
  EXPECT_LE(loss_rel, 1e-3);
  EXPECT_NE(bf16.loss, f32.loss);  // the products were rounded
  double worst_norm = 0.0, worst_max = 0.0;
  std::string worst_norm_name, worst_max_name;
  for (const auto& [name, g] : f32.gradients) {
    const Tensor& h = bf16.gradients.at(name);
    ASSERT_EQ(h.shape(), g.shape()) << name;
    const float* a = g.data<float>();
    const float* b = h.data<float>();
    double diff2 = 0.0, norm2 = 0.0, max_diff = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double d = static_cast<double>(b[i]) - a[i];
      diff2 += d * d;
      norm2 += static_cast<double>(a[i]) * a[i];
      max_diff = std::max(max_diff, std::abs(d));
      max_ref = std::max(max_ref, std::abs(static_cast<double>(a[i])));
    }
    const double norm_rel = std::sqrt(diff2 / norm2), max_rel = max_diff / max_ref;
    EXPECT_LE(norm_rel, 2e-2) << name;
    EXPECT_LE(max_rel, 5e-2) << name;
    if (norm_rel > worst_norm) worst_norm = norm_rel, worst_norm_name = name;
    if (max_rel > worst_max) worst_max = max_rel, worst_max_name = name;
  }
  std::cout << f32.gradients.size()
            << " gradients, bf16 products vs f32: worst |diff| / |grad| = " << worst_norm << " ("
            << worst_norm_name << "), worst max |diff| / max |grad| = " << worst_max << " ("
            << worst_max_name << ")" << std::endl;
}

// The bf16 run is bitwise the same for 1, 2 and 3 threads.
TEST(MixedPrecision, Bf16GradientsAreBitwiseTheSameForAnyThreadCount) {
  const LoadedModel loaded = load_model(tinycoder());
  const int64_t B = 2, T = 80;
  const std::vector<int32_t> tokens = text_tokens(B * T);
  const int saved = omp_get_max_threads();
  std::vector<GradientRun> runs;
  for (const int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    runs.push_back(gradients_of(loaded, tokens, B, T, DType::BF16));
  }
  omp_set_num_threads(saved);
  for (size_t r = 1; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r].loss, runs[0].loss) << "threads " << r + 1;
    for (const auto& [name, g] : runs[0].gradients)
      EXPECT_EQ(std::memcmp(g.raw(), runs[r].gradients.at(name).raw(), g.nbytes()), 0)
          << name << " differs between 1 and " << r + 1 << " threads";
  }
}

TEST(MixedPrecision, RefusesComputeDtypesOtherThanF32AndBf16) {
  try {
    set_compute_dtype(DType::F16);
    ADD_FAILURE() << "accepted f16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("compute dtype must be f32 or bf16"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(compute_dtype(), DType::F32);
}

}  // namespace
}  // namespace kiln::train
