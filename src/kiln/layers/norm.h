// Norm: one normalization module (RMS, RMS with 1 + w, LayerNorm, non-parametric, none).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/layers/weights.h"
#include "kiln/models/model_spec.h"

namespace kiln {

class Norm {
 public:
  Norm() = default;
  // Reads `<module>/scale` [dim] (and `<module>/bias` for LayerNorm) as the kind needs.
  Norm(const NormSpec& spec, const WeightMap& weights, const std::string& module, int64_t dim);

  // Normalizes each row of x.   x, y: [rows, dim] f32 (may alias)
  void forward(const float* x, int64_t rows, float* y) const;
  int64_t dim() const { return dim_; }

 private:
  NormSpec spec_;
  int64_t dim_ = 0;
  std::vector<float> scale_;  // [dim] or empty
  std::vector<float> bias_;   // [dim] or empty
};

}  // namespace kiln
