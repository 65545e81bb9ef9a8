// The observer through which a forward pass reports named intermediate activations.
#pragma once

#include <functional>
#include <string>

#include "kiln/core/tensor.h"

namespace kiln {

// Called during Model::forward with a module path (see models/weight_names.h for the list)
// and its output, an f32 view [B, T, ...] valid only during the call (copy to keep it).
using ActivationObserver = std::function<void(const std::string& name, const Tensor& activation)>;

}  // namespace kiln
