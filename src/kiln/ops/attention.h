// Causal scaled dot-product attention over a KV cache, with grouped KV heads, an optional
// sliding window or chunks (local attention within aligned blocks of positions) and
// optional logit soft-capping.
#pragma once

#include <cstdint>

namespace kiln::ops {

// Shapes and settings of one attention call.
struct AttentionShape {
  int64_t batch = 0;      // B
  int64_t tokens = 0;     // T: new query tokens per row
  int64_t start = 0;      // absolute position of the first query token
  int64_t cache_len = 0;  // S: rows of the cache that hold keys (start + T)
  int64_t cache_max = 0;  // capacity of the cache along its time axis
  int64_t heads = 0;      // Hq
  int64_t kv_heads = 0;   // Hkv; Hq must be a multiple (query head h reads KV head h / (Hq/Hkv))
  int64_t head_dim = 0;   // D of queries and keys
  int64_t value_dim = 0;  // Dv of values and the output
  float scale = 0.0f;     // multiplies q.k
  int64_t window = 0;     // > 0: query at position p sees keys p - window < j <= p
  int64_t chunk = 0;      // > 0: query at position p sees keys p - p % chunk <= j <= p
  float softcap = 0.0f;   // > 0: score = softcap * tanh(score / softcap)
  // Attention sinks: [Hq] logits, one per query head, that join each softmax denominator
  // (as a key whose value is zero), or nullptr for none.
  const float* sinks = nullptr;
};

// out[b, t, h] = sum_j softmax_j(score(t, j)) v[b, j, h / group] over visible keys j,
// score(t, j) = scale * q[b, t, h] . k[b, j, h / group]; key j is visible to query t when
// j <= start + t (causal), with a window j > start + t - window, and with chunks j in the
// same chunk: j >= start + t - (start + t) % chunk. With sinks, the softmax runs over the
// visible scores and sinks[h]: weights exp(score_j) / (exp(sinks[h]) + sum_j' exp(score_j')).
//   q:       [B, T, Hq, D]
//   k_cache: [B, cache_max, Hkv, D]   (rows [0, cache_len) filled)
//   v_cache: [B, cache_max, Hkv, Dv]
//   out:     [B, T, Hq, Dv]
// Runs the active kernel set (ops/kernels.h): the fast kernels visit keys in blocks with an
// online softmax and never store a [T, S] score matrix. Throws Error for inconsistent shapes.
void causal_attention(const float* q, const float* k_cache, const float* v_cache, float* out,
                      const AttentionShape& shape);

// The reference kernel of causal_attention(): full scores, softmax, weighted sum.
void causal_attention_reference(const float* q, const float* k_cache, const float* v_cache,
                                float* out, const AttentionShape& shape);

// The first key position visible to the query at `position`: 0, or later with a window or
// chunks (both may be set; the later bound wins).
inline int64_t first_visible_key(const AttentionShape& s, int64_t position) {
  int64_t first = s.window > 0 && position - s.window + 1 > 0 ? position - s.window + 1 : 0;
  if (s.chunk > 0 && position - position % s.chunk > first) first = position - position % s.chunk;
  return first;
}

}  // namespace kiln::ops
