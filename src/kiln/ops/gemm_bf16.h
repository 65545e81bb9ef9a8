// The bf16 GEMM of mixed-precision training (`kiln train --compute-dtype bf16`): the contract
// of ops::gemm_f32 (ops/linear.h) with both operands rounded to bf16 (round to nearest even,
// NaN kept) before they are multiplied; every product is exact in f32 and the sums are f32.
// As in MaxText's dtype=bfloat16 with f32 weights: the caller keeps f32 values (masters,
// activations, gradients) and only the products see bf16.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln::ops {

//   y[j, o] (+)= sum_k bf16(a(j, k)) * bf16(w(o, k))   for j < rows, o < out, k < depth
//   a(j, k) = a[j * depth + k] ([rows, depth]), or a[k * rows + j] when a_transposed;
//   w(o, k) = w[o * depth + k] ([out, depth]), or w[k * out + o] when w_transposed;
//   y: [rows, out], overwritten, or added to when `accumulate`.
// The AVX-512 kernel set multiplies bf16 pairs with vdpbf16ps (AVX512_BF16), the AVX2 set
// widens them and uses f32 FMAs, the reference set sums in double. Every output element is
// summed in an order fixed by `depth` (never by the thread count or the layouts). Both
// operands are rounded and packed once per call (2 bytes per element of each, held in the
// calling thread's scratch buffers). Runs on all OpenMP threads.
void gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed, float* y,
               int64_t rows, int64_t depth, int64_t out, bool accumulate);

// A weight operand w(o, k) rounded and packed once for several gemm_bf16 products with the same
// w (the lm_head's row chunks): out * depth * 2 bytes, for the kernel set active when it was
// made (using it under another set is an Error). The reference set keeps a pointer to w (which
// must then outlive it). The same results as gemm_bf16 with w itself, bitwise.
class Bf16Weight {
 public:
  Bf16Weight(const float* w, bool w_transposed, int64_t out, int64_t depth);
  int64_t out() const { return out_; }
  int64_t depth() const { return depth_; }

 private:
  friend void gemm_bf16(const float* a, bool a_transposed, const Bf16Weight& w, float* y,
                        int64_t rows, bool accumulate);
  const void* kernel_set_ = nullptr;
  const float* w_ = nullptr;
  bool w_transposed_ = false;
  int64_t out_ = 0, depth_ = 0;
  std::vector<uint32_t> words_;
};
void gemm_bf16(const float* a, bool a_transposed, const Bf16Weight& w, float* y, int64_t rows,
               bool accumulate);

// Its reference: plain loops over the rounded operands, each sum in double (the exact sum of
// the exact products, rounded once to f32 and then added to y).
void gemm_bf16_reference(const float* a, bool a_transposed, const float* w, bool w_transposed,
                         float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate);

}  // namespace kiln::ops
