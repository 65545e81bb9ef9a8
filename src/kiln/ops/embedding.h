// Token embedding lookup from a table stored in f32, bf16 or f16.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.h"

namespace kiln::ops {

// out[n] = table[ids[n]] * scale, converted to f32.
//   table: [vocab, dim] in `table_dtype`;  ids: [count];  out: [count, dim] f32
// Throws Error naming the id when one lies outside [0, vocab).
void embedding_lookup(const void* table, DType table_dtype, int64_t vocab, int64_t dim,
                      const int32_t* ids, int64_t count, float scale, float* out);

}  // namespace kiln::ops
