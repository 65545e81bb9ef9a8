// The linear front (checks, then the active kernel set's kernel for the weight's format) and
// its reference kernel: one weight row at a time, converted to f32 in a per-thread buffer.
#include "kiln/ops/linear.h"

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/tensor.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/cpu/scratch.h"
#include "kiln/ops/cpu/work_pool.h"
#include "kiln/ops/kernels.h"

namespace kiln::ops {

WeightView weight_view(const void* weight, DType format, int64_t in) {
  // (tested before building messages: this runs on every decode step)
  if (cpu::weight_format_index(format) < 0)
    throw Error("linear: unsupported weight dtype " + std::string(dtype_name(format)));
  if (in % dtype_block(format) != 0)
    throw Error("linear: " + std::string(dtype_name(format)) + " weight rows of " +
                std::to_string(in) + " inputs are not whole blocks of " +
                std::to_string(dtype_block(format)));
  return {weight, format, dtype_block(format), dtype_nbytes(format, in)};
}

WeightView weight_view(const Tensor& weight) {
  check(weight.ndim() == 2 && weight.is_contiguous(),
        "linear: the weight must be a contiguous matrix, not " + weight.shape_string());
  return weight_view(weight.raw(), weight.dtype(), weight.dim(1));
}

namespace {
thread_local bool gemm_rows = false;  // inside a GemmRowsScope
}  // namespace

GemmRowsScope::GemmRowsScope() : previous_(gemm_rows) {
  gemm_rows = true;
}
GemmRowsScope::~GemmRowsScope() {
  gemm_rows = previous_;
}
bool gemm_rows_forced() {
  return gemm_rows;
}

void linear(const float* x, const WeightView& weight, const float* bias, float* y, int64_t rows,
            int64_t in, int64_t out) {
  const int index = cpu::weight_format_index(weight.format);
  if (index < 0 || weight.row_bytes != dtype_nbytes(weight.format, in))
    throw Error("linear: a " + std::string(dtype_name(weight.format)) + " weight view of " +
                std::to_string(weight.row_bytes) + " bytes per row does not hold " +
                std::to_string(in) + " inputs");
  const cpu::LinearKernel kernel = active_kernels().linear[index];
  constexpr int64_t kGemmRows = kGemvMaxRows + 1;
  if (!gemm_rows || rows <= 0 || rows >= kGemmRows)
    return kernel(x, weight, bias, y, rows, in, out);
  // The GEMM for a few rows: zero rows below them (their outputs dropped). Per-thread buffers,
  // kept between calls (a prompt pass makes many).
  thread_local std::vector<float> padded_x, padded_y;
  padded_x.assign(static_cast<size_t>(kGemmRows * in), 0.0f);
  padded_y.resize(static_cast<size_t>(kGemmRows * out));
  std::copy(x, x + rows * in, padded_x.begin());
  kernel(padded_x.data(), weight, bias, padded_y.data(), kGemmRows, in, out);
  std::copy(padded_y.begin(), padded_y.begin() + rows * out, y);
}

void linear_group(const float* x, int64_t rows, int64_t in, const LinearProduct* products,
                  int count) {
  int64_t total = 0;  // output rows of all products
  for (int k = 0; k < count; ++k) {
    const LinearProduct& p = products[k];
    if (cpu::weight_format_index(p.weight.format) < 0 ||
        p.weight.row_bytes != dtype_nbytes(p.weight.format, in))
      throw Error("linear: a " + std::string(dtype_name(p.weight.format)) + " weight view of " +
                  std::to_string(p.weight.row_bytes) + " bytes per row does not hold " +
                  std::to_string(in) + " inputs");
    total += p.out;
  }
  // Several rows keep their own calls (the GEMV's rows are strided by each product's `out`);
  // so does a product too small for threads, and a call from inside a parallel region.
  const int threads = cpu::pool_threads();
  if (rows != 1 || count < 2 || in * total < (int64_t{1} << 18) || omp_in_parallel() ||
      threads < 2 || gemm_rows) {
    for (int k = 0; k < count; ++k)
      linear(x, products[k].weight, products[k].bias, products[k].y, rows, in, products[k].out);
    return;
  }
  const cpu::KernelTable& kernels = active_kernels();
  int64_t bytes = 0;  // of all weight rows
  for (int k = 0; k < count; ++k)
    bytes += products[k].out * static_cast<int64_t>(products[k].weight.row_bytes);
  // x stays as it is for the whole call: each thread converts it for its kernels once.
  const uint64_t epoch = cpu::new_input_epoch();
  auto body = [&](int64_t begin, int64_t end) {
    // The chunk [begin, end) of the outputs of all products in order, each part within one
    // product computed by its kernel alone (whose own hand-out then runs on this thread). A
    // GEMV sums each output the same whatever outputs share its call.
    const cpu::InputEpoch scope(epoch);
    int64_t first = 0;  // the first output of product k among all
    for (int k = 0; k < count; ++k) {
      const LinearProduct& p = products[k];
      const int64_t o0 = std::max(begin - first, int64_t{0});
      const int64_t o1 = std::min(end - first, p.out);
      first += p.out;
      if (o0 >= o1) continue;
      WeightView part = p.weight;
      part.data = static_cast<const std::byte*>(p.weight.data) + o0 * p.weight.row_bytes;
      kernels.linear[cpu::weight_format_index(p.weight.format)](
          x, part, p.bias ? p.bias + o0 : nullptr, p.y + o0, 1, in, o1 - o0);
    }
  };
  cpu::parallel_chunks(total, cpu::gemv_chunk_rows(total, bytes / total, threads), body, threads);
}

void linear(const float* x, const void* weight, DType weight_dtype, const float* bias, float* y,
            int64_t rows, int64_t in, int64_t out) {
  linear(x, weight_view(weight, weight_dtype, in), bias, y, rows, in, out);
}

void linear_refine_top(const float* x, const WeightView& exact, float* y, int64_t rows, int64_t in,
                       int64_t out, int64_t k) {
  if (k < 0 || k > kRefineMaxOutputs)
    throw Error("linear: refining " + std::to_string(k) + " outputs per row; 0 to " +
                std::to_string(kRefineMaxOutputs) + " can be");
  k = std::min(k, out);
  if (k == 0 || rows <= 0) return;
  const int index = cpu::weight_format_index(exact.format);
  if (index < 0 || exact.row_bytes != dtype_nbytes(exact.format, in))
    throw Error("linear: a " + std::string(dtype_name(exact.format)) + " weight view of " +
                std::to_string(exact.row_bytes) + " bytes per row does not hold " +
                std::to_string(in) + " inputs");
  const cpu::LinearKernel kernel = active_kernels().linear[index];
  const auto* w_bytes = static_cast<const std::byte*>(exact.data);
  auto refine_rows = [&](int64_t row_begin, int64_t row_end) {
    for (int64_t n = row_begin; n < row_end; ++n) {
      float* y_row = y + n * out;  // [out]
      // The k largest so far, largest first: one comparison per output once k are held.
      int64_t best[kRefineMaxOutputs];
      float value[kRefineMaxOutputs];
      int64_t held = 0;
      for (int64_t o = 0; o < out; ++o) {
        const float v = y_row[o];
        if (held == k && !(v > value[k - 1])) continue;
        int64_t j = held < k ? held++ : k - 1;
        for (; j > 0 && value[j - 1] < v; --j) {
          value[j] = value[j - 1];
          best[j] = best[j - 1];
        }
        value[j] = v;
        best[j] = o;
      }
      for (int64_t j = 0; j < held; ++j) {
        const WeightView row{w_bytes + best[j] * exact.row_bytes, exact.format, exact.block,
                             exact.row_bytes};
        kernel(x + n * in, row, nullptr, y_row + best[j], 1, in, 1);
      }
    }
  };
  // One row per chunk on the work pool (a row's result is its thread's alone).
  if (rows > 1 && rows * out >= (int64_t{1} << 18))
    cpu::parallel_chunks(rows, 1, refine_rows);
  else
    refine_rows(0, rows);
}

void linear_reference(const float* x, const WeightView& weight, const float* bias, float* y,
                      int64_t rows, int64_t in, int64_t out) {
  const auto* w_bytes = static_cast<const std::byte*>(weight.data);
  // Threads pay off only when they share enough multiply-adds to amortize waking them.
  const bool parallel = rows * in * out >= (int64_t{1} << 18);
#pragma omp parallel if (parallel)
  {
    auto* converted = static_cast<float*>(
        cpu::thread_scratch(cpu::ScratchSlot::kWeightRow, sizeof(float) * in));  // [in]
#pragma omp for schedule(static)
    for (int64_t o = 0; o < out; ++o) {
      const float* w_row;  // [in]
      if (weight.format == DType::F32) {
        w_row = reinterpret_cast<const float*>(w_bytes + o * weight.row_bytes);
      } else {
        convert_to_f32(w_bytes + o * weight.row_bytes, weight.format, converted,
                       static_cast<size_t>(in));
        w_row = converted;
      }
      const float b = bias ? bias[o] : 0.0f;
      for (int64_t n = 0; n < rows; ++n) {
        const float* x_row = x + n * in;  // [in]
        float sum = 0.0f;
        for (int64_t i = 0; i < in; ++i) sum += x_row[i] * w_row[i];
        y[n * out + o] = sum + b;
      }
    }
  }
}

void linear_reference(const float* x, const void* weight, DType weight_dtype, const float* bias,
                      float* y, int64_t rows, int64_t in, int64_t out) {
  linear_reference(x, weight_view(weight, weight_dtype, in), bias, y, rows, in, out);
}

void gemm_f32(const float* a, bool a_transposed, const float* w, bool w_transposed, float* y,
              int64_t rows, int64_t depth, int64_t out, bool accumulate) {
  active_kernels().gemm_f32(a, a_transposed, w, w_transposed, y, rows, depth, out, accumulate);
}

void gemm_f32_reference(const float* a, bool a_transposed, const float* w, bool w_transposed,
                        float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate) {
#pragma omp parallel for schedule(static) if (rows * depth * out >= (int64_t{1} << 18))
  for (int64_t o = 0; o < out; ++o) {
    // w(o, k): w[o * depth + k], or w[k * out + o] when transposed
    const int64_t w_first = w_transposed ? o : o * depth, w_step = w_transposed ? out : 1;
    for (int64_t j = 0; j < rows; ++j) {
      float sum = 0.0f;
      for (int64_t k = 0; k < depth; ++k)
        sum += (a_transposed ? a[k * rows + j] : a[j * depth + k]) * w[w_first + k * w_step];
      y[j * out + o] = accumulate ? y[j * out + o] + sum : sum;
    }
  }
}

}  // namespace kiln::ops

namespace kiln::ops::cpu {

int weight_format_index(DType format) {
  for (int i = 0; i < kWeightFormatCount; ++i)
    if (kWeightFormats[i] == format) return i;
  return -1;
}

const KernelTable& reference_table() {
  // One plain kernel serves every format: it dequantizes rows through convert_to_f32.
  static const KernelTable table{
      "reference",
      {&linear_reference, &linear_reference, &linear_reference, &linear_reference,
       &linear_reference, &linear_reference, &linear_reference, &linear_reference,
       &linear_reference, &linear_reference},
      &causal_attention_reference,
      &silu_gated_reference,
      &gemm_f32_reference,
      &silu_gated_backward_reference,
      &attention_probs_reference,
      &attention_probs_backward_reference,
      &adamw_update_reference};
  return table;
}
}  // namespace kiln::ops::cpu
