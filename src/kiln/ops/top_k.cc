// Reference argmax and top-k.
#include "kiln/ops/top_k.h"

#include <algorithm>
#include <numeric>

namespace kiln::ops {

int64_t argmax(const float* x, int64_t count) {
  int64_t best = 0;
  for (int64_t i = 1; i < count; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

std::vector<int64_t> top_k(const float* x, int64_t count, int64_t k) {
  k = std::clamp<int64_t>(k, 0, count);
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [x](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  order.resize(k);
  return order;
}

}  // namespace kiln::ops
