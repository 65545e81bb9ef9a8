// GGUF quantized tensors kept quantized: the ggml block types whose values a Kiln block
// format (core/quant.h, core/kquant.h) holds exactly, read into that format so that Kiln's
// quantized kernels run them without dequantizing. ggml's Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and
// Q6_K blocks are Kiln's byte for byte (Q4_0: f16 d, 16 bytes of nibbles, x = d * (q - 8)).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "kiln/core/tensor.h"
#include "kiln/io/gguf.h"

namespace kiln {

// The Kiln block format that holds a ggml type's values exactly: Q8_0, Q4_0, Q4_1, Q4_K, Q5_K
// and Q6_K -> the Kiln format of the same name (the same bytes). None for the other types
// (Q5_0 / Q5_1: 5-bit values in blocks of 32 that no Kiln kernel reads).
std::optional<DType> ggml_direct_dtype(GgmlType type);

// The tensor `info` of `file` in PyTorch shape as ggml_direct_dtype(info.type): a read-only
// view of the file (a copy when the offset is odd). Throws Error naming the file and tensor
// for types with no direct format.
Tensor gguf_read_direct(const GgufFile& file, const GgufTensorInfo& info);

}  // namespace kiln
