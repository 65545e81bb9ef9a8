#include "kiln/layers/linear.h"

#include "kiln/models/weight_names.h"
#include "kiln/ops/linear.h"

namespace kiln {

Linear::Linear(const WeightMap& weights, const std::string& module, int64_t in, int64_t out,
               bool has_bias)
    : Linear(require_weight(weights, names::kernel(module), {out, in})) {
  if (has_bias) bias_ = require_f32(weights, names::bias(module), {out});
}

Linear::Linear(const Tensor& weight) : weight_(weight.contiguous()) {}

void Linear::forward(const float* x, int64_t rows, float* y) const {
  ops::linear(x, weight_.raw(), weight_.dtype(), bias_.empty() ? nullptr : bias_.data(), y, rows,
              in(), out());
}

}  // namespace kiln
