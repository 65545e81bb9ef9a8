// Forward and backward passes of the ops that only some families use (the Llama set is in
// train/backward.h, with the same conventions: f32 buffers, gradients ADDED into the buffers
// given, a null gradient buffer skipped, results independent of the thread count):
// LayerNorm (OLMo-1's non-parametric one too), tanh soft-capping (Gemma 2's attention logits and
// final logits), causal attention with soft-capped logits, a non-gated MLP activation, and the
// lm_head with a bias and/or a final soft-cap joined to the cross-entropy.
#pragma once

#include <cstdint>

#include "kiln/models/model_spec.h"
#include "kiln/train/backward.h"

namespace kiln::train {

// ---- LayerNorm: y = (x - mean) * r * w + b, r = 1 / sqrt(var + eps) (biased variance) ----
//   x, y [rows, dim] (may alias); weight, bias [dim] or null (1, 0); mean, inv_std [rows] out.
void layer_norm_forward(const float* x, const float* weight, const float* bias, float* y,
                        int64_t rows, int64_t dim, float eps, float* mean, float* inv_std);
// With xh = (x - mean) r and g = dy * w:
//   dx += r * (g - mean(g) - xh * mean(g * xh))
//   dweight += sum over rows of dy * xh;  dbias += sum over rows of dy
void layer_norm_backward(const float* x, const float* weight, const float* mean,
                         const float* inv_std, const float* dy, float* dx, float* dweight,
                         float* dbias, int64_t rows, int64_t dim);

// ---- Soft-capping: y = cap * tanh(x / cap) ----
// In place on x [count].
void softcap_forward(float* x, int64_t count, float cap);
// From the output y: d [count] holds dy on entry and dx = dy * (1 - (y / cap)^2) on return.
void softcap_backward(const float* y, float* d, int64_t count, float cap);

// ---- Causal attention (train/backward.h's AttentionDims) with soft-capped logits ----
// out = softmax(cap * tanh(scale q k^T / cap), causal, window) v; cap = 0: no capping.
void capped_attention_forward(const float* q, const float* k, const float* v, float* out,
                              const AttentionDims& dims, float cap);
// With c_j = cap tanh(s_j / cap), s_j = scale q . k_j and p = softmax(c):
//   dv_j += p_j dout;  dc_j = p_j (dout . v_j - sum_i p_i dout . v_i);
//   ds_j = dc_j (1 - (c_j / cap)^2);  dq += scale sum_j ds_j k_j;  dk_j += scale ds_j q
// Plain loops, threads over (row, KV head).
void capped_attention_backward(const float* q, const float* k, const float* v, const float* dout,
                               float* dq, float* dk, float* dv, const AttentionDims& dims,
                               float cap);

// ---- A non-gated MLP activation h = act(x) (SiLU, GELU erf or tanh, ReLU, ReLU^2) ----
// Forward: x, h [count] (ops::apply_activation on a copy).
void activation_forward(Activation activation, const float* x, float* h, int64_t count);
//   dx += dh * act'(x)
void activation_backward(Activation activation, const float* x, const float* dh, float* dx,
                         int64_t count);

// ---- lm_head + cross-entropy with an optional bias and final soft-cap ----
// logits = cap * tanh((h W^T + b) / cap) (cap 0: no capping; bias may be null), in chunks of
// chunk_rows rows as lm_head_cross_entropy() does; the same loss and gradients (dh, dw, db may
// each be null). Returns the mean loss over the targets that are not ignored.
double lm_head_cross_entropy_capped(const float* h, const float* weight, const float* bias,
                                    const int32_t* targets, float* dh, float* dw, float* db,
                                    int64_t rows, int64_t hidden, int64_t vocab, float cap,
                                    int64_t chunk_rows = 256);

}  // namespace kiln::train
