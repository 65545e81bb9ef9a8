#include "kiln/io/gguf_direct.h"

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/quant.h"

namespace kiln {

std::optional<DType> ggml_direct_dtype(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return DType::Q8_0;
    case GgmlType::kQ4_0:
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

void ggml_q4_0_to_q4_1(const std::byte* src, int64_t blocks, std::byte* dst,
                       const std::string& what) {
  constexpr size_t kQ4_0Bytes = 18;  // f16 d, 16 bytes of nibbles
  static_assert(sizeof(BlockQ4_1) == kQ4_0Bytes + 2);
  for (int64_t b = 0; b < blocks; ++b) {
    const std::byte* in = src + static_cast<size_t>(b) * kQ4_0Bytes;
    BlockQ4_1 out;
    std::memcpy(&out.d, in, 2);
    // -8 d is exact in f32 (a power of two times an f16), and exact in f16 unless it overflows.
    const float m = -8.0f * f16_to_f32(out.d);
    check(std::isfinite(m) && std::fabs(m) <= 65504.0f,
          what + ": Q4_0 block " + std::to_string(b) + " has scale " +
              std::to_string(f16_to_f32(out.d)) +
              ", whose minimum -8 d is not a finite f16 (no exact Q4_1 form)");
    out.m = f32_to_f16(m);
    std::memcpy(out.qs, in + 2, sizeof(out.qs));
    std::memcpy(dst + static_cast<size_t>(b) * sizeof(BlockQ4_1), &out, sizeof(out));
  }
}

Tensor gguf_read_direct(const GgufFile& file, const GgufTensorInfo& info) {
  const std::string what = file.path() + ": tensor '" + info.name + "'";
  const std::optional<DType> dtype = ggml_direct_dtype(info.type);
  check(dtype.has_value(), what + ": " + ggml_type_name(static_cast<uint32_t>(info.type)) +
                               " has no Kiln block format (it is read dequantized)");
  if (info.type == GgmlType::kQ4_0) {
    Tensor out = Tensor::zeros(*dtype, info.shape);
    ggml_q4_0_to_q4_1(file.tensor_data(info),
                      static_cast<int64_t>(info.nbytes) / ggml_type_size(info.type),
                      static_cast<std::byte*>(out.mutable_raw()), what);
    return out;
  }
  // Q8_0, Q4_1 and the K-quants: ggml's blocks are Kiln's, byte for byte (f16 fields: 2-byte
  // aligned).
  if (info.offset % 2 == 0) return Tensor::view_of(file.storage(), info.offset, *dtype, info.shape);
  Tensor out = Tensor::zeros(*dtype, info.shape);
  std::memcpy(out.mutable_raw(), file.tensor_data(info), info.nbytes);
  return out;
}

}  // namespace kiln
