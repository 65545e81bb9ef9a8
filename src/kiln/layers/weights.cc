#include "kiln/layers/weights.h"

#include "kiln/core/error.h"

namespace kiln {

const Tensor& require_weight(const WeightMap& weights, const std::string& name,
                             const Shape& shape) {
  auto it = weights.find(name);
  check(it != weights.end(), "missing weight '" + name + "'");
  check(it->second.shape() == shape, "weight '" + name + "' has shape " +
                                         it->second.shape_string() + ", expected " +
                                         shape_to_string(shape));
  // Block-quantized weights (core/quant.h) are floating-point values stored in blocks.
  check(is_float(it->second.dtype()) || is_quantized(it->second.dtype()),
        "weight '" + name + "' is not a floating-point tensor");
  return it->second;
}

std::vector<float> require_f32(const WeightMap& weights, const std::string& name,
                               const Shape& shape) {
  Tensor t = require_weight(weights, name, shape).to(DType::F32);
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

}  // namespace kiln
