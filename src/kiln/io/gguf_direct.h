// GGUF quantized tensors kept quantized: the ggml block types whose values a Kiln block
// format (core/quant.h, core/kquant.h) holds exactly, read into that format so that Kiln's
// quantized kernels run them without dequantizing. ggml's Q8_0, Q4_1, Q4_K, Q5_K and Q6_K
// blocks are Kiln's byte for byte; Q4_0 (f16 d, 16 bytes of nibbles, x = d * (q - 8)) becomes
// Q4_1 with m = -8 d.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "kiln/core/tensor.h"
#include "kiln/io/gguf.h"

namespace kiln {

// The Kiln block format that holds a ggml type's values exactly: Q8_0, Q4_1, Q4_K, Q5_K and
// Q6_K -> the Kiln format of the same name (the same bytes), Q4_0 -> Q4_1 (d * (q - 8) =
// d * q + m with m = -8 d: the same f16 d and nibbles; -8 d is exact in f16 unless it
// overflows, |d| > 8188). None for the other types (Q5_0 / Q5_1: 5-bit values in blocks of
// 32 that no Kiln kernel reads).
std::optional<DType> ggml_direct_dtype(GgmlType type);

// Repacks `blocks` Q4_0 blocks (18 bytes each) from `src` into Kiln Q4_1 blocks (20 bytes:
// f16 d, f16 m = -8 d, the same nibbles) at `dst`. Throws Error naming `what` and the block
// for a scale whose -8 d is not a finite f16 (|d| > 8188, Inf, NaN): no exact Q4_1 form.
void ggml_q4_0_to_q4_1(const std::byte* src, int64_t blocks, std::byte* dst,
                       const std::string& what);

// The tensor `info` of `file` in PyTorch shape as ggml_direct_dtype(info.type): Q8_0, Q4_1
// and the K-quants a read-only view of the file (a copy when the offset is odd), Q4_0 repacked into
// a new Q4_1 tensor. Throws Error naming the file and tensor for types with no direct format.
Tensor gguf_read_direct(const GgufFile& file, const GgufTensorInfo& info);

}  // namespace kiln
