// Linear layer kernel: y = x W^T + b with W stored [out, in] in a plain float dtype or a
// block-quantized format, seen through a WeightView.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kiln/core/dtype.h"

namespace kiln {
class Tensor;
}

namespace kiln::ops {

// How a linear kernel reads a weight matrix [out, in]: `out` rows of `row_bytes` bytes from
// `data`, each row `in` elements of `format` stored in blocks of `block` elements along the
// input dimension (1 for F32, BF16, F16; 32 for Q8_0 and Q4_1; 128 for Q4_1_128). The
// quantized formats keep each block's scale and minimum inside the block, next to its values
// (core/quant.h), as ggml's do, so a view needs no separate scale operand.
struct WeightView {
  const void* data = nullptr;
  DType format = DType::F32;
  int64_t block = 1;
  size_t row_bytes = 0;
};

// The view of `weight` [out, in] (`in` elements per row, stored contiguously). Throws Error
// for formats no linear kernel reads (the integer dtypes, F64) and, for quantized formats,
// when `in` is not a whole number of blocks.
WeightView weight_view(const void* weight, DType format, int64_t in);
// The same for a contiguous 2-D tensor.
WeightView weight_view(const Tensor& weight);

// Up to this many rows, linear() runs the GEMV, which sums every row exactly as it sums it
// alone (batch invariance: the server's decode steps share one call for up to this many
// sequences); more rows take the GEMM.
inline constexpr int64_t kGemvMaxRows = 16;

// y[n, o] = sum_i x[n, i] * W[o, i] + bias[o], for n < rows.
//   x:      [rows, in]  f32
//   weight: [out, in]   read in place (never copied or converted as a whole)
//   bias:   [out]       f32, or nullptr
//   y:      [rows, out] f32 (must not alias x)
// Runs the active kernel set's kernel for the weight's format (ops/kernels.h), on all
// OpenMP threads. With bf16 weights and more than kGemvMaxRows rows the AVX-512 kernel rounds x to
// bf16 (as a bf16 model computes); up to kGemvMaxRows it splits x into two bf16 parts (near
// f32; ops::Bf16Gemv in ops/kernels.h: KILN_BF16_GEMV); with quantized weights the AVX2 / AVX-512
// kernels (GEMV and GEMM alike) quantize x per block of 32 to int8 (quantize_activations in
// core/quant.h) and multiply in integers; the other paths keep x in f32.
void linear(const float* x, const WeightView& weight, const float* bias, float* y, int64_t rows,
            int64_t in, int64_t out);
// While one is alive on a thread, linear() and linear_group() on that thread run the GEMM for
// every row count: a call of fewer than kGemvMaxRows + 1 rows is padded with zero rows (the
// kernels' GEMMs sum each row with its own accumulators, in an order set by `in` only, so a
// row's result is bitwise the same whatever rows share the call, alone included). For the
// server's prompt passes (Model::prefill_rows): a prompt row gets one result whether it runs
// alone or with other prompts' rows, in whatever chunks. Scopes nest.
class GemmRowsScope {
 public:
  GemmRowsScope();
  ~GemmRowsScope();
  GemmRowsScope(const GemmRowsScope&) = delete;
  GemmRowsScope& operator=(const GemmRowsScope&) = delete;

 private:
  bool previous_ = false;
};
// True inside a GemmRowsScope on this thread.
bool gemm_rows_forced();

// One product of linear_group: y = x W^T + b, W seen through `weight` [out, in].
struct LinearProduct {
  WeightView weight;
  const float* bias = nullptr;  // [out] or nullptr
  float* y = nullptr;           // [rows, out]
  int64_t out = 0;
};
// linear() for each of `count` products of the same x [rows, in], bitwise as linear() gives
// each. For one row (a decode step) the products share one parallel region, each thread
// taking a contiguous share of all their output rows, where one linear() per product would
// start and join the threads once each (the query, key and value projections; an MLP's gate
// and up).
void linear_group(const float* x, int64_t rows, int64_t in, const LinearProduct* products,
                  int count);
// linear() over weight_view(weight, weight_dtype, in).
void linear(const float* x, const void* weight, DType weight_dtype, const float* bias, float* y,
            int64_t rows, int64_t in, int64_t out);

// The most outputs per row that linear_refine_top() recomputes.
inline constexpr int64_t kRefineMaxOutputs = 64;

// Recomputes the k largest outputs of each row of y = x W^T from another copy of W: for each
// row n, the k largest y[n, o] (ties: the lower o first) are replaced by sum_i x[n, i] *
// exact[o, i], each through the active set's kernel for exact's format on that one weight row
// (the GEMV), the other outputs left as they are. For a head whose quantized copy streams
// every output and whose unquantized table (e.g. a tied embedding, bf16) is read for only k
// rows: the top outputs and hence the argmax are those of the unquantized head. A row's result
// depends on that row only (batch invariance).
//   x: [rows, in] f32;  exact: [out, in] (any linear format);  y: [rows, out] f32, in place
// Throws Error when k is not in [0, kRefineMaxOutputs]; k > out refines every output.
void linear_refine_top(const float* x, const WeightView& exact, float* y, int64_t rows, int64_t in,
                       int64_t out, int64_t k);

// The reference kernel of linear() for every format: plain loops, one weight row converted
// (dequantized) to f32 at a time, x kept in f32.
void linear_reference(const float* x, const WeightView& weight, const float* bias, float* y,
                      int64_t rows, int64_t in, int64_t out);
void linear_reference(const float* x, const void* weight, DType weight_dtype, const float* bias,
                      float* y, int64_t rows, int64_t in, int64_t out);

// The f32 GEMM of linear() with two options that training's backward uses:
//   y[j, o] (+)= sum_k a(j, k) * w(o, k)   for j < rows, o < out, k < depth
//   a(j, k) = a[j * depth + k] ([rows, depth]), or a[k * rows + j] when a_transposed
//   ([depth, rows]: the GEMM packs its panels from either layout, no transposed copy);
//   w(o, k) = w[o * depth + k] ([out, depth]), or w[k * out + o] when w_transposed
//   ([depth, out]: read in place, the same sums either way);
//   y: [rows, out], overwritten, or added to when `accumulate`.
// Every output element is summed in an order that depends on the shapes only (never on the
// thread count or the layouts). Runs the active kernel set on all OpenMP threads.
void gemm_f32(const float* a, bool a_transposed, const float* w, bool w_transposed, float* y,
              int64_t rows, int64_t depth, int64_t out, bool accumulate);
// Its reference kernel: plain loops.
void gemm_f32_reference(const float* a, bool a_transposed, const float* w, bool w_transposed,
                        float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate);

}  // namespace kiln::ops
