// The divisor MaxText's llama converter (llama_or_mistral_ckpt.py) folds into the query
// projection. The per-family trees that use it are in maxtext_tree.h.
#pragma once

#include <cstdint>

#include "kiln/core/tensor.h"

namespace kiln {

// sqrt(head_dim) rounded to `dtype` (MaxText rounds it to its bf16 cast type:
// np.sqrt(head_dim).astype(CAST_DTYPE)). Throws Error for non-floating dtypes.
double maxtext_query_divisor(int64_t head_dim, DType dtype);

}  // namespace kiln
