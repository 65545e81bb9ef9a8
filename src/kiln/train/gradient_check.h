// Test helpers for gradient checks against central finite differences in f64 (used by the
// train/*_test.cc files).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace kiln::train::gradient_check {

using Vec = std::vector<double>;

// n normal values (times `scale`), rounded to f32 so the f32 kernels see the same inputs.
inline Vec random_vec(int64_t n, std::mt19937& rng, double scale = 1.0) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Vec v(n);
  for (double& x : v) x = static_cast<float>(normal(rng) * scale);
  return v;
}

inline std::vector<float> f32(const Vec& v) {
  return {v.begin(), v.end()};
}

// Central differences of `f` at `x`, element by element, in f64.
inline Vec numeric_gradient(const std::function<double(const Vec&)>& f, Vec x, double h) {
  Vec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = f(x);
    x[i] = saved - h;
    const double minus = f(x);
    x[i] = saved;
    g[i] = (plus - minus) / (2 * h);
  }
  return g;
}

// Prints and checks max |analytic - numeric| / max |numeric| <= tolerance; returns it (a
// size mismatch or an all-zero numeric gradient fails and returns infinity).
inline double expect_close(const std::string& what, const std::vector<float>& analytic,
                           const Vec& numeric, double tolerance) {
  if (analytic.size() != numeric.size()) {
    ADD_FAILURE() << what << ": " << analytic.size() << " analytic values vs " << numeric.size()
                  << " numeric";
    return std::numeric_limits<double>::infinity();
  }
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < numeric.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(analytic[i] - numeric[i]));
    max_ref = std::max(max_ref, std::abs(numeric[i]));
  }
  if (!(max_ref > 0.0)) {
    ADD_FAILURE() << what << ": the numeric gradient is all zero";
    return std::numeric_limits<double>::infinity();
  }
  const double rel = max_diff / max_ref;
  std::cout << what << ": max rel err vs finite differences = " << rel << std::endl;
  EXPECT_LE(rel, tolerance) << what;
  return rel;
}

}  // namespace kiln::train::gradient_check
