// Selection over a vector of scores: argmax and the k largest.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln::ops {

// Index of the largest of x[0, count); the first one on ties (as torch.argmax).
int64_t argmax(const float* x, int64_t count);

// Indices of the k largest of x[0, count) (k is clamped to count), largest first; ties keep
// the lower index first.
std::vector<int64_t> top_k(const float* x, int64_t count, int64_t k);

}  // namespace kiln::ops
