// Softmax over the last dimension.
#pragma once

#include <cstdint>

namespace kiln::ops {

// y[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r]) for each row r.
//   x, y: [rows, dim] f32 (may alias). Rows of all -inf give NaN, as in PyTorch.
void softmax(const float* x, float* y, int64_t rows, int64_t dim);

}  // namespace kiln::ops
