// Transforms that families attach to WeightMapping: taking a part of a fused HF tensor,
// directly (Phi-3) or out of per-head interleaved rows (GPT-NeoX).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kiln/core/tensor.h"

namespace kiln {

using WeightTransform = std::function<Tensor(const std::vector<Tensor>&)>;

// Rows [begin, end) of the first input (dimension 0; works for weights and biases).
WeightTransform take_rows(int64_t begin, int64_t end);

// Part `part` of `parts` out of a fused projection whose output rows are grouped per head:
// [heads, parts, head_dim] (GPT-NeoX's query_key_value, Falcon's without multi-query). The
// result holds that part of every head: [heads * head_dim, ...].
WeightTransform take_per_head_part(int64_t heads, int64_t parts, int64_t head_dim, int64_t part);

}  // namespace kiln
