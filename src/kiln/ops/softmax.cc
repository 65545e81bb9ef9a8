// Reference softmax: max-subtracted exponentials, normalized by their sum.
#include "kiln/ops/softmax.h"

#include <algorithm>
#include <cmath>

namespace kiln::ops {

void softmax(const float* x, float* y, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;  // [dim]
    float* yr = y + r * dim;        // [dim]
    const float max_value = *std::max_element(xr, xr + dim);
    float sum = 0.0f;
    for (int64_t i = 0; i < dim; ++i) {
      yr[i] = std::exp(xr[i] - max_value);
      sum += yr[i];
    }
    for (int64_t i = 0; i < dim; ++i) yr[i] /= sum;
  }
}

}  // namespace kiln::ops
