// Causal self-attention with attention sinks (gpt-oss), forward and backward: each query head h
// has a learned logit sink[h] that joins every softmax denominator with no value, so the weights
// of the real keys sum to less than 1:
//   p_j = exp(s_j) / (sum_i exp(s_i) + exp(sink_h)),  s_j = scale q . k_j,  out = sum_j p_j v_j
// `sinks` may be null (no sink: the plain softmax). Grouped KV heads and an optional sliding
// window as in train/backward.h's AttentionDims, and chunked attention (Llama 4): with chunk > 0
// the query at t sees only keys j <= t of its own chunk, j >= t - t % chunk. Plain loops (f64
// sums), threads over (row, KV head); bitwise the same for any thread count.
#pragma once

#include <utility>
#include <vector>

#include "kiln/train/backward.h"

namespace kiln::train {

//   q [B, T, Hq, D], k, v [B, T, Hkv, D], sinks [Hq], out [B, T, Hq, D] (overwritten)
void sink_attention_forward(const float* q, const float* k, const float* v, const float* sinks,
                            float* out, const AttentionDims& dims, int64_t chunk = 0);
// Adds dq, dk, dv and d_sinks [Hq] (d_sinks may be null):
//   dp_j = dout . v_j;  c = sum_j p_j dp_j;  ds_j = p_j (dp_j - c)
//   dq += scale sum_j ds_j k_j;  dk_j += scale ds_j q;  dv_j += p_j dout;  d_sink -= p_sink c
void sink_attention_backward(const float* q, const float* k, const float* v, const float* sinks,
                             const float* dout, float* dq, float* dk, float* dv, float* d_sinks,
                             const AttentionDims& dims, int64_t chunk = 0);

// Attention over each packed document on its own (a document is a contiguous block of rows
// of q, k, v and out), or over the whole batch when not packed. Soft-capped logits (cap > 0)
// take the capped kernels; attention sinks [Hq] (gpt-oss, their gradient added to d_sinks) or
// chunked attention (chunk > 0, Llama 4) the sink kernels above; the rest (latent attention too)
// the blocked kernels, whose forward writes each query's softmax statistics [rows, Hq, 2] into
// `stats` and whose backward reads them from `saved_stats`.
void attention_by_document(const std::vector<std::pair<int64_t, int64_t>>& documents,
                           AttentionDims dims, float cap, const float* q, const float* k,
                           const float* v, float* out, const float* dout, float* dq, float* dk,
                           float* dv, const float* sinks, float* d_sinks, int64_t chunk,
                           float* stats, const float* saved_stats);

}  // namespace kiln::train
