// Selection over a vector of scores: argmax and the k largest.
#pragma once

#include <cstdint>

namespace kiln::ops {

// Index of the largest of x[0, count); the first one on ties (as torch.argmax).
int64_t argmax(const float* x, int64_t count);

// Indices of the k largest of x[0, count), largest first; ties keep the lower index first.
// Requires 0 <= k <= count.   indices: [k] (out)
void top_k(const float* x, int64_t count, int64_t k, int64_t* indices);

}  // namespace kiln::ops
