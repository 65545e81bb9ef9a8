// Softmax over the last dimension.
#pragma once

#include <cstdint>

namespace kiln::ops {

// y[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r]) for each row r.
//   x, y: [rows, dim] f32 (may alias). Rows of all -inf give NaN, as in PyTorch.
void softmax(const float* x, float* y, int64_t rows, int64_t dim);

}  // namespace kiln::ops

namespace kiln::ops {

// ---- Training attention's softmax over a block of scores (train/backward.cc) ----
// Row i of the block s [rows, cols] holds scaled q . k scores; only columns [begin[i],
// end[i]) are visible to its query (begin[i] < end[i] <= cols). Forward, in place:
//   m = max of the visible scores, r = 1 / sum of their e^(s - m)
//   s[i, j] = e^(s[i, j] - m) r for the visible j, 0 for the others
//   stats[2 i] = m, stats[2 i + 1] = r   (kept for the backward)
void attention_probs(float* s, int64_t rows, int64_t cols, const int64_t* begin, const int64_t* end,
                     float* stats);
void attention_probs_reference(float* s, int64_t rows, int64_t cols, const int64_t* begin,
                               const int64_t* end, float* stats);
// Backward, in place, from the same scores s and dp [rows, cols] (dout . v), with the forward's
// stats, over the visible columns (0 elsewhere): p is the forward's (the same operations)
//   p = e^(s - m) r -> s;   ds = p (dp - sum_j p_j dp_j) scale -> dp
void attention_probs_backward(float* s, float* dp, int64_t rows, int64_t cols, const int64_t* begin,
                              const int64_t* end, const float* stats, float scale);
void attention_probs_backward_reference(float* s, float* dp, int64_t rows, int64_t cols,
                                        const int64_t* begin, const int64_t* end,
                                        const float* stats, float scale);

// ---- AdamW's update of n parameters (train/adamw.h's adamw_update), elementwise ----
//   g' = g clip;  w *= decay;  m = m beta1 + g' (1 - beta1);  v = v beta2 + g'^2 (1 - beta2)
//   w -= step_size (m / (sqrt(v) / bias_correction2_sqrt + eps))
// in f32 (the fast kernel sets may fuse a multiply and an add: the same to rounding).
// Elementwise, so the result does not depend on n or on the thread count.
struct AdamWScalars {
  float clip = 1.0f, decay = 1.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, step_size = 0.0f,
        bias_correction2_sqrt = 1.0f;
};
void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);
void adamw_update_reference(float* w, const float* g, float* m, float* v, int64_t n,
                            const AdamWScalars& s);

}  // namespace kiln::ops
