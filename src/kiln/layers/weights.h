// The weights a model is built from, keyed by Kiln name, and checked access to them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"

namespace kiln {

// Kiln tensor name (models/weight_names.h) -> tensor (often an mmap-backed view).
using WeightMap = std::map<std::string, Tensor>;

// The tensor `name`, checked to have `shape`. Throws Error naming the tensor when it is
// absent or has another shape.
const Tensor& require_weight(const WeightMap& weights, const std::string& name, const Shape& shape);
// Same as require_weight, converted to a vector of f32 (for small tensors: norms, biases).
std::vector<float> require_f32(const WeightMap& weights, const std::string& name,
                               const Shape& shape);

}  // namespace kiln
