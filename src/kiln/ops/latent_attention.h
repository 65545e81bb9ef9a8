// Multi-head latent attention in the absorbed form (DeepSeek-V2/V3 decode): attention runs
// in the space of the compressed KV latent, with the key up-projection folded into the
// query and the value up-projection applied after attention, so cached latents are never
// expanded into per-head keys and values.
#pragma once

#include <cstdint>

#include "kiln/core/dtype.h"

namespace kiln::ops {

// The KV up-projection W [heads * (nope + value_dim), latent_dim] (stored [out, in] in
// `dtype`: F32, BF16 or F16) and its per-head blocks: rows [h (nope + value_dim),
// + nope) are head h's key block W_UK[h] [nope, latent_dim], the next value_dim rows its
// value block W_UV[h] [value_dim, latent_dim].
struct KvUpProjection {
  const void* weight = nullptr;
  DType dtype = DType::F32;
  int64_t heads = 0;
  int64_t nope = 0;        // qk_nope_head_dim
  int64_t value_dim = 0;   // v_head_dim
  int64_t latent_dim = 0;  // kv_lora_rank
};

// Folds each head's key block into its query: q_latent[r, h] = W_UK[h]^T q_nope[r, h], so
// that q_latent . latent equals q_nope . (W_UK latent), the expanded key's non-rotary part.
//   q_nope:   [rows, heads, nope] f32
//   q_latent: [rows, heads, latent_dim] f32
void absorb_query(const float* q_nope, const KvUpProjection& kv_up, float* q_latent, int64_t rows);

// Applies each head's value block after attention: out[r, h] = W_UV[h] attended[r, h].
//   attended: [rows, heads, latent_dim] f32 (attention-weighted sums of latents)
//   out:      [rows, heads, value_dim] f32
void expand_values(const float* attended, const KvUpProjection& kv_up, float* out, int64_t rows);

// Shapes and settings of one latent attention call.
struct LatentAttentionShape {
  int64_t batch = 0;       // B
  int64_t tokens = 0;      // T: new query tokens per row
  int64_t start = 0;       // absolute position of the first query token
  int64_t cache_len = 0;   // S: filled positions of the cache (start + T)
  int64_t cache_max = 0;   // capacity of the cache along its time axis
  int64_t heads = 0;       // H
  int64_t latent_dim = 0;  // R: kv_lora_rank
  int64_t rope_dim = 0;    // P: qk_rope_head_dim
  float scale = 0.0f;      // multiplies the score
};

// Causal attention of every head over the shared latents and rotary keys:
// score(t, j) = scale * (q_latent[b, t, h] . latent[b, j] + q_rope[b, t, h] . rotary_key[b, j])
// for j <= start + t; attended[b, t, h] = sum_j softmax_j(score) latent[b, j].
//   q_latent:    [B, T, H, R]
//   q_rope:      [B, T, H, P] (after RoPE)
//   latent:      [B, cache_max, R]  (rows [0, cache_len) filled)
//   rotary_keys: [B, cache_max, P]
//   attended:    [B, T, H, R]
void latent_attention(const float* q_latent, const float* q_rope, const float* latent,
                      const float* rotary_keys, float* attended, const LatentAttentionShape& shape);

}  // namespace kiln::ops
