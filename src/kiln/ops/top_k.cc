// Reference argmax and top-k.
#include "kiln/ops/top_k.h"

#include <algorithm>
#include <numeric>

#include "kiln/ops/cpu/scratch.h"

namespace kiln::ops {

int64_t argmax(const float* x, int64_t count) {
  int64_t best = 0;
  for (int64_t i = 1; i < count; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

void top_k(const float* x, int64_t count, int64_t k, int64_t* indices) {
  auto* order = static_cast<int64_t*>(
      cpu::thread_scratch(cpu::ScratchSlot::kTopKOrder, sizeof(int64_t) * count));  // [count]
  std::iota(order, order + count, int64_t{0});
  std::partial_sort(order, order + k, order + count,
                    [x](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  std::copy_n(order, k, indices);
}

}  // namespace kiln::ops
