// Linear: y = x W^T + b over a weight kept in its stored dtype.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/layers/weights.h"

namespace kiln {

class Linear {
 public:
  Linear() = default;
  // Reads `<module>/kernel` [out, in] and, when `has_bias`, `<module>/bias` [out].
  Linear(const WeightMap& weights, const std::string& module, int64_t in, int64_t out,
         bool has_bias);
  // Wraps an existing [out, in] matrix (e.g. the embedding table as a tied lm_head).
  explicit Linear(const Tensor& weight);
  // Wraps an existing [out, in] matrix and its bias [out] (empty for none), e.g. views of
  // stacked experts.
  Linear(const Tensor& weight, std::vector<float> bias);

  // y = x W^T + b.   x: [rows, in] f32;  y: [rows, out] f32
  void forward(const float* x, int64_t rows, float* y) const;
  // forward() of each layer (all of the same `in`) on the same x into its y, bitwise the same,
  // as one ops::linear_group (for one row: one parallel region for all).
  static void forward_group(const float* x, int64_t rows,
                            std::initializer_list<std::pair<const Linear*, float*>> layers);
  int64_t in() const { return weight_.dim(1); }
  int64_t out() const { return weight_.dim(0); }

 private:
  Tensor weight_;            // [out, in] f32, bf16 or f16, contiguous
  std::vector<float> bias_;  // [out] or empty
};

}  // namespace kiln
