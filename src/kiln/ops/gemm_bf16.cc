// ops::gemm_bf16: the active kernel set's bf16 GEMM (cpu/train_gemm_bf16.inc), and its
// reference.
#include "kiln/ops/gemm_bf16.h"

#include "kiln/core/error.h"

#include "kiln/core/dtype.h"
#include "kiln/ops/cpu/train_gemm_bf16.h"
#include "kiln/ops/kernels.h"

namespace kiln::ops {

void gemm_bf16(const float* a, bool a_transposed, const float* w, bool w_transposed, float* y,
               int64_t rows, int64_t depth, int64_t out, bool accumulate) {
  // The kernel set in use picks the kernel (KILN_KERNELS, ops/kernels.h); its tables are
  // only compared here, so taking a table the CPU cannot run is harmless.
  const cpu::KernelTable* active = &active_kernels();
  if (active == &cpu::avx512_table())
    return cpu::avx512_gemm_bf16(a, a_transposed, w, w_transposed, y, rows, depth, out, accumulate);
  if (active == &cpu::avx2_table())
    return cpu::avx2_gemm_bf16(a, a_transposed, w, w_transposed, y, rows, depth, out, accumulate);
  gemm_bf16_reference(a, a_transposed, w, w_transposed, y, rows, depth, out, accumulate);
}

Bf16Weight::Bf16Weight(const float* w, bool w_transposed, int64_t out, int64_t depth)
    : kernel_set_(&active_kernels()), w_(w), w_transposed_(w_transposed), out_(out), depth_(depth) {
  if (kernel_set_ == &cpu::avx512_table()) {
    words_.resize(static_cast<size_t>(cpu::avx512_bf16_weight_words(out, depth)));
    cpu::avx512_pack_bf16_weight(w, w_transposed, out, depth, words_.data());
  } else if (kernel_set_ == &cpu::avx2_table()) {
    words_.resize(static_cast<size_t>(cpu::avx2_bf16_weight_words(out, depth)));
    cpu::avx2_pack_bf16_weight(w, w_transposed, out, depth, words_.data());
  }
}

void gemm_bf16(const float* a, bool a_transposed, const Bf16Weight& w, float* y, int64_t rows,
               bool accumulate) {
  const cpu::KernelTable* active = &active_kernels();
  check(active == w.kernel_set_,
        "gemm_bf16: the packed weight was made for another kernel set than the active one");
  if (active == &cpu::avx512_table())
    return cpu::avx512_gemm_bf16_packed(a, a_transposed, w.words_.data(), y, rows, w.depth_, w.out_,
                                        accumulate);
  if (active == &cpu::avx2_table())
    return cpu::avx2_gemm_bf16_packed(a, a_transposed, w.words_.data(), y, rows, w.depth_, w.out_,
                                      accumulate);
  gemm_bf16_reference(a, a_transposed, w.w_, w.w_transposed_, y, rows, w.depth_, w.out_,
                      accumulate);
}

void gemm_bf16_reference(const float* a, bool a_transposed, const float* w, bool w_transposed,
                         float* y, int64_t rows, int64_t depth, int64_t out, bool accumulate) {
  auto rounded = [](float v) { return static_cast<double>(bf16_to_f32(f32_to_bf16(v))); };
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0.0;
      for (int64_t k = 0; k < depth; ++k) {
        const float av = a_transposed ? a[k * rows + j] : a[j * depth + k];
        const float wv = w_transposed ? w[k * out + o] : w[o * depth + k];
        sum += rounded(av) * rounded(wv);
      }
      float& dst = y[j * out + o];
      dst = accumulate ? dst + static_cast<float>(sum) : static_cast<float>(sum);
    }
  }
}

}  // namespace kiln::ops
