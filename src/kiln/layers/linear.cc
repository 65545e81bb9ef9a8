#include "kiln/layers/linear.h"

#include <utility>

#include "kiln/core/error.h"
#include "kiln/models/weight_names.h"
#include "kiln/ops/linear.h"

namespace kiln {

Linear::Linear(const WeightMap& weights, const std::string& module, int64_t in, int64_t out,
               bool has_bias)
    : Linear(require_weight(weights, names::kernel(module), {out, in})) {
  if (has_bias) bias_ = require_f32(weights, names::bias(module), {out});
}

Linear::Linear(const Tensor& weight) : weight_(weight.contiguous()) {}

Linear::Linear(const Tensor& weight, std::vector<float> bias)
    : weight_(weight.contiguous()), bias_(std::move(bias)) {
  check(bias_.empty() || static_cast<int64_t>(bias_.size()) == weight_.dim(0),
        "linear: a bias of " + std::to_string(bias_.size()) + " values for " +
            std::to_string(weight_.dim(0)) + " outputs");
}

void Linear::forward(const float* x, int64_t rows, float* y) const {
  ops::linear(x, weight_.raw(), weight_.dtype(), bias_.empty() ? nullptr : bias_.data(), y, rows,
              in(), out());
}

void Linear::forward_group(const float* x, int64_t rows,
                           std::initializer_list<std::pair<const Linear*, float*>> layers) {
  ops::LinearProduct products[8];
  check(layers.size() <= 8, "Linear::forward_group: at most 8 layers");
  int count = 0;
  int64_t in = 0;
  for (const auto& [layer, y] : layers) {
    check(count == 0 || layer->in() == in, "Linear::forward_group: layers of different inputs");
    in = layer->in();
    products[count++] = {ops::weight_view(layer->weight_.raw(), layer->weight_.dtype(), in),
                         layer->bias_.empty() ? nullptr : layer->bias_.data(), y, layer->out()};
  }
  ops::linear_group(x, rows, in, products, count);
}

}  // namespace kiln
