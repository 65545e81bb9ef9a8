// Backward passes of the ops a Llama-shaped decoder uses: f32 buffers, OpenMP over rows where
// rows are independent. The matrix products (linear layers, attention) run on GEMMs, and each
// of those kernels has a plain reference kernel (`*_reference`) that tests hold it to. Every
// kernel gives bitwise the same result for any number of threads: work is split in pieces
// fixed by the shapes, and sums that span pieces are taken in a fixed order. Each takes what its
// forward saved (inputs, and small per-row statistics) and the gradient of the loss with
// respect to the op's output, and ADDS the gradients of its inputs and parameters into the
// buffers given (callers zero them first); a null gradient buffer is skipped. Shapes are in
// the comments; rows = B * T flattened.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/models/model_spec.h"

namespace kiln::train {

// ---- The dtype of the linear layers' matrix products (mixed precision) ----
// F32 (the default): linear_forward / linear_backward below run ops::gemm_f32. BF16: they run
// ops::gemm_bf16 (ops/gemm_bf16.h): the forward product and both backward products (dx and dw)
// take their operands rounded to bf16 and sum in f32, as MaxText's dtype=bfloat16 with f32
// weights; everything else (parameters and their AdamW state, activations, gradients, norms,
// softmax, attention, the loss) stays f32. `kiln train --compute-dtype bf16`. Process-wide; set
// it between passes, not while one runs. Any other dtype is an Error.
void set_compute_dtype(DType dtype);
DType compute_dtype();
// Sets the compute dtype for its lifetime and restores the previous one (tests).
class ComputeDtypeScope {
 public:
  explicit ComputeDtypeScope(DType dtype) : saved_(compute_dtype()) { set_compute_dtype(dtype); }
  ~ComputeDtypeScope() { set_compute_dtype(saved_); }
  ComputeDtypeScope(const ComputeDtypeScope&) = delete;
  ComputeDtypeScope& operator=(const ComputeDtypeScope&) = delete;

 private:
  DType saved_;
};

// ---- Linear: y = x W^T + b, W stored [out, in] (Kiln's layout) ----
// Forward (f32 weights): y [rows, out], bitwise what the inference kernel (ops::linear)
// gives; from 16 rows on it runs ops::gemm_f32, which splits rows across threads. With the
// compute dtype BF16: b + ops::gemm_bf16 for any number of rows.
void linear_forward(const float* x, const float* weight, const float* bias, float* y, int64_t rows,
                    int64_t in, int64_t out);
//   x [rows, in], weight [out, in], dy [rows, out]
//   dx += dy W     [rows, in]
//   dw += dy^T x   [out, in]
//   db += sum dy   [out]
// Both products on ops::gemm_f32 (the active kernel set's GEMM), which reads W, x and dy in
// their own layouts (no transposed copies); on ops::gemm_bf16 with the compute dtype BF16 (db
// is an f32 sum either way).
void linear_backward(const float* x, const float* weight, const float* dy, float* dx, float* dw,
                     float* db, int64_t rows, int64_t in, int64_t out);
// The same as plain loops.
void linear_backward_reference(const float* x, const float* weight, const float* dy, float* dx,
                               float* dw, float* db, int64_t rows, int64_t in, int64_t out);

// ---- Embedding lookup: y[n] = table[tokens[n]] * scale ----
//   tokens [n], dy [n, dim], dtable [vocab, dim]: dtable[tokens[n]] += dy[n] * scale
// (a scatter-add: repeated tokens accumulate).
void embedding_backward(const int32_t* tokens, const float* dy, float* dtable, int64_t n,
                        int64_t vocab, int64_t dim, float scale);

// ---- RMSNorm: y = x * r * w, r = 1 / sqrt(mean(x^2) + eps); w is (1 + scale) when one_plus ----
// The forward is ops::rms_norm with its inv_rms output (r per row, kept for the backward).
//   dx += r * (g - x * r^2 * mean(g * x)),  g = dy * w
//   dweight += sum over rows of dy * x * r
void rms_norm_backward(const float* x, const float* weight, const float* inv_rms, const float* dy,
                       float* dx, float* dweight, int64_t rows, int64_t dim, bool one_plus);

// ---- RoPE (ops/rope.h's apply_rope, half-split or interleaved, partial rotary) ----
// The rotation is orthogonal (times attention_scaling), so the gradient of its input is the
// output's gradient turned back by the same angles. In place: d [tokens, heads, head_dim]
// holds dy on entry and dx on return (the non-rotated features pass through).
void rope_backward(float* d, const int64_t* positions, int64_t tokens, int64_t heads,
                   int64_t head_dim, int64_t rotary_dim, const float* inv_freq,
                   float attention_scaling, bool interleaved);

// ---- Causal self-attention with grouped KV heads over one sequence per row ----
struct AttentionDims {
  int64_t batch = 0, tokens = 0;    // B, T (queries and keys both at positions 0..T-1)
  int64_t heads = 0, kv_heads = 0;  // Hq, Hkv (query head h reads KV head h / (Hq / Hkv))
  int64_t head_dim = 0;             // D (queries, keys and values)
  float scale = 0.0f;               // multiplies q . k
  int64_t window = 0;               // > 0: query t sees keys t - window < j <= t
};
// out = softmax(scale q k^T, causal) v   (ops::causal_attention); with cap > 0 the logits are
// soft-capped first (family_backward.h's capped_attention_forward).
//   q [B, T, Hq, D], k, v [B, T, Hkv, D], out [B, T, Hq, D]
void attention_forward(const float* q, const float* k, const float* v, float* out,
                       const AttentionDims& dims, float cap = 0.0f);
// The training forward: the same attention (causal, windowed; no soft-cap) in blocks of 64
// queries, each a (row, query head, block) work item: scores = scale q k^T and out = p v as
// single-threaded OpenBLAS sgemm on the strided heads, the softmax a vector kernel
// (ops::attention_probs). Also writes stats [B, T, Hq, 2], each query's softmax statistics
// (its largest score and 1 / its softmax denominator), for attention_backward; may be null.
void attention_forward_train(const float* q, const float* k, const float* v, float* out,
                             float* stats, const AttentionDims& dims);
// With the forward's `stats` (attention_forward_train), for each query, p as the forward made it:
//   p_j = e^(scale q . k_j - max) / sum;  dv_j += p_j dout;  dp_j = dout . v_j;
//   ds_j = p_j (dp_j - sum_i p_i dp_i);  dq += scale sum_j ds_j k_j;  dk_j += scale ds_j q
// Null `stats`: the forward is run first to make them. Threads over (row, KV head): a KV head's
// query heads are handled by one thread. Blocks of 64 queries against the keys they can see:
// scores and dp as two GEMMs, p and ds by a vector kernel (ops::attention_probs_backward), then
// dq, dk and dv as three more (single-threaded OpenBLAS sgemm on the strided heads in place).
void attention_backward(const float* q, const float* k, const float* v, const float* dout,
                        float* dq, float* dk, float* dv, const AttentionDims& dims,
                        const float* stats = nullptr);
// The same, one query at a time in plain loops; with cap > 0 on soft-capped logits
// (family_backward.h's capped_attention_backward).
void attention_backward_reference(const float* q, const float* k, const float* v, const float* dout,
                                  float* dq, float* dk, float* dv, const AttentionDims& dims,
                                  float cap = 0.0f);

// ---- Gated MLP activation: h = act(gate) * up (SwiGLU for SiLU, GeGLU-tanh for GeluTanh) ----
// Forward: gate, up, h [count].
void gated_forward(Activation activation, const float* gate, const float* up, float* h,
                   int64_t count);
//   dgate += dh * up * act'(gate);  dup += dh * act(gate)
// Throws Error for activations other than kSilu and kGeluTanh.
void gated_backward(Activation activation, const float* gate, const float* up, const float* dh,
                    float* dgate, float* dup, int64_t count);

// ---- Residual add y = a + b: da += dy and db += dy ----
void add_backward(const float* dy, float* da, float* db, int64_t count);

// ---- Cross-entropy over shifted tokens ----
inline constexpr int32_t kIgnoreTarget = -1;
// targets[b, t] = tokens[b, t + 1], and kIgnoreTarget at t = T - 1 and wherever
// loss_mask[b, t + 1] == 0 (loss_mask [B, T] may be null: no position is ignored).
std::vector<int32_t> next_token_targets(const int32_t* tokens, const uint8_t* loss_mask,
                                        int64_t batch, int64_t tokens_per_row);
// The number of targets that are not ignored.
int64_t count_targets(const int32_t* targets, int64_t n);
// For `rows` rows of logits [rows, vocab] and targets [rows] (kIgnoreTarget skips a row):
// returns sum over counted rows of -log softmax(logits)[target], and writes
//   dlogits = weight * (softmax(logits) - onehot(target))   ([rows, vocab]; 0 on ignored rows)
// (weight = 1 / count_targets for the mean). dlogits may be null; it may alias logits.
double cross_entropy_rows(const float* logits, const int32_t* targets, float* dlogits, int64_t rows,
                          int64_t vocab, double weight);
// The loss of an lm head and cross-entropy together, in chunks of `chunk_rows` rows, so that
// only [chunk_rows, vocab] logits exist at a time: logits = h W^T (W [vocab, hidden]),
// loss = mean over non-ignored rows of -log softmax(logits)[target]. Adds the gradients
// dh [rows, hidden] and dw [vocab, hidden] (either may be null). Returns the loss (0 when every
// target is ignored).
double lm_head_cross_entropy(const float* h, const float* weight, const int32_t* targets, float* dh,
                             float* dw, int64_t rows, int64_t hidden, int64_t vocab,
                             int64_t chunk_rows = 256);

}  // namespace kiln::train
