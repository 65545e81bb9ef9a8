// Training pieces of multi-head latent attention (DeepSeek-V2/V3, layers/mla.h) in its
// expanded form: a forward that keeps what the backward needs, and the backward. Built from
// the kernels of train/backward.h (linear, RMSNorm, RoPE, causal attention); keys and values
// are expanded per head from the normed KV latent, and the value head size may differ from
// the query/key head size (both are zero-padded to the larger for the attention kernels).
// f32 buffers; rows = B * T flattened; gradients are ADDED; null gradients are skipped.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kiln/models/model_spec.h"
#include "kiln/train/moe_backward.h"

namespace kiln::train {

struct MlaParams {
  LinearRef query_down, query_up;     // q_lora_rank > 0: [Rq, hidden], [heads * D, Rq]
  LinearRef query;                    // q_lora_rank == 0: [heads * D, hidden]
  const float* query_norm = nullptr;  // [Rq]
  float* d_query_norm = nullptr;
  LinearRef kv_down;               // [R + P, hidden]
  const float* kv_norm = nullptr;  // [R]
  float* d_kv_norm = nullptr;
  LinearRef kv_up;  // [heads * (nope + V), R]
  LinearRef out;    // [hidden, heads * V]
};

struct MlaSaved {
  std::vector<float> q_latent_raw, q_latent, q_inv_rms;  // [rows, Rq] x 2, [rows]
  std::vector<float> latent_raw, latent, kv_inv_rms;     // [rows, R] x 2, [rows]
  std::vector<float> q, k, v;        // [rows, heads, Dp] (rotated, zero-padded; Dp = max(D, V))
  std::vector<float> mixed;          // [rows, heads * V] the attention output before `out`
  std::vector<float> softmax_stats;  // [rows, heads, 2] each query's softmax max and 1 / sum
};

// Throws Error "training: <where>: <feature> is not supported yet" for MLA settings the
// functions below do not compute (sliding windows, soft-capping, QK norms, sinks, ...).
void check_mla_trainable(const AttentionSpec& spec, const std::string& where);

// out [rows, hidden] (overwritten) = MLA of x [rows, hidden] (the normed residual), rows of T
// tokens at `positions` [rows]; `documents` as in TrainModel (packed rows; empty: none).
void mla_forward(const AttentionSpec& spec, const MlaParams& p, const float* x, int64_t batch,
                 int64_t tokens, int64_t hidden, const int64_t* positions,
                 const std::vector<std::pair<int64_t, int64_t>>& documents, float* out,
                 MlaSaved& saved);

// From d_out [rows, hidden]: dx [rows, hidden] += d/dx and every parameter gradient of p.
void mla_backward(const AttentionSpec& spec, const MlaParams& p, const float* x,
                  const MlaSaved& saved, int64_t batch, int64_t tokens, int64_t hidden,
                  const int64_t* positions,
                  const std::vector<std::pair<int64_t, int64_t>>& documents, const float* d_out,
                  float* dx);

}  // namespace kiln::train
