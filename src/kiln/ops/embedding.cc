// Reference embedding lookup: one row converted per token.
#include "kiln/ops/embedding.h"

#include <string>

#include "kiln/core/error.h"
#include "kiln/core/tensor.h"

namespace kiln::ops {

void embedding_lookup(const void* table, DType table_dtype, int64_t vocab, int64_t dim,
                      const int32_t* ids, int64_t count, float scale, float* out) {
  const auto* bytes = static_cast<const std::byte*>(table);
  const size_t row_bytes = dtype_nbytes(table_dtype, dim);  // quantized tables: whole blocks
  for (int64_t n = 0; n < count; ++n) {
    if (ids[n] < 0 || ids[n] >= vocab)
      throw Error("token id " + std::to_string(ids[n]) + " is outside the vocabulary [0, " +
                  std::to_string(vocab) + ")");
    float* row = out + n * dim;  // [dim]
    convert_to_f32(bytes + ids[n] * row_bytes, table_dtype, row, dim);
    if (scale != 1.0f)
      for (int64_t i = 0; i < dim; ++i) row[i] *= scale;
  }
}

}  // namespace kiln::ops
