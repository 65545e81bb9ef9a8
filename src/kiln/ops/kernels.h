// Run-time choice of the CPU kernel set behind ops::linear and ops::causal_attention: the
// best one this CPU supports (AVX-512 with BF16 and VNNI, else AVX2, else the reference kernels),
// or the one named by the environment variable KILN_KERNELS (reference, avx2, avx512).
#pragma once

#include <string>
#include <vector>

#include "kiln/ops/cpu/kernel_table.h"

namespace kiln::ops {

// The kernel set in use. The first call reads KILN_KERNELS (unset or "auto": the best the
// CPU supports) and throws Error for an unknown name or a set the CPU cannot run.
const cpu::KernelTable& active_kernels();

// Switches every later kernel call to the set `name` ("auto" for the best). Not safe while
// another thread is running kernels. Throws Error like active_kernels().
void use_kernels(const std::string& name);

// The kernel sets this CPU can run, from the reference to the fastest.
std::vector<std::string> available_kernels();

// How the AVX-512 kernel set's bf16-weight GEMV (up to kGemvMaxRows rows: decode and the
// server's steps) multiplies; the GEMM (more rows) always rounds the activations to bf16.
enum class Bf16Gemv {
  // Default. Each activation split into two bf16 parts, hi = bf16(x) and lo = bf16(x - hi)
  // (about 16 significant bits), each multiplied with the weights by vdpbf16ps: the weights
  // are used as stored, and the result is close to f32 activations (about 4e-6 relative per
  // product).
  kSplit,
  // The activations rounded to bf16 (8 significant bits), one vdpbf16ps per pair of inputs:
  // half the multiplies of kSplit, as a bf16 model computes in PyTorch or llama.cpp; opt-in,
  // since it moves the logits (greedy tokens may change).
  kRounded,
  // The weights widened to f32 and multiplied with f32 FMAs (the AVX2 kernels' way).
  kWiden,
};
// The mode in use. The first call reads KILN_BF16_GEMV (split, rounded or widen; unset:
// split) and throws Error for another value.
Bf16Gemv bf16_gemv();
// Switches later calls to `mode`. Not safe while another thread is running kernels.
void use_bf16_gemv(Bf16Gemv mode);
// The mode's name ("split", "rounded", "widen"), and the mode of a name (Error naming
// KILN_BF16_GEMV for another).
const char* bf16_gemv_name(Bf16Gemv mode);
Bf16Gemv bf16_gemv_named(const std::string& name);

}  // namespace kiln::ops
