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

}  // namespace kiln::ops
