#include "kiln/io/gguf_direct.h"

#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/quant.h"

namespace kiln {

std::optional<DType> ggml_direct_dtype(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return DType::Q8_0;
    case GgmlType::kQ4_0:
      return DType::Q4_0;
    case GgmlType::kQ4_1:
      return DType::Q4_1;
    case GgmlType::kQ4_K:
      return DType::Q4_K;
    case GgmlType::kQ5_K:
      return DType::Q5_K;
    case GgmlType::kQ6_K:
      return DType::Q6_K;
    default:
      return std::nullopt;
  }
}

Tensor gguf_read_direct(const GgufFile& file, const GgufTensorInfo& info) {
  const std::string what = file.path() + ": tensor '" + info.name + "'";
  const std::optional<DType> dtype = ggml_direct_dtype(info.type);
  check(dtype.has_value(), what + ": " + ggml_type_name(static_cast<uint32_t>(info.type)) +
                               " has no Kiln block format (it is read dequantized)");
  // ggml's blocks are Kiln's, byte for byte (f16 fields: 2-byte aligned; Kiln's Q4_0 kernels
  // read its 18-byte blocks with unaligned loads).
  if (info.offset % 2 == 0) return Tensor::view_of(file.storage(), info.offset, *dtype, info.shape);
  Tensor out = Tensor::zeros(*dtype, info.shape);
  std::memcpy(out.mutable_raw(), file.tensor_data(info), info.nbytes);
  return out;
}

}  // namespace kiln
