// Rotary position embeddings: rotating query/key heads by position (the frequencies come
// from ops/rope_frequencies.h).
#pragma once

#include <cstdint>

namespace kiln::ops {

// Rotates the first `rotary_dim` features of every head in place; the rest pass through.
// Position p turns pair k by the angle p * inv_freq[k], with cos and sin multiplied by
// `attention_scaling` (1 except for YaRN / LongRoPE). Pairs are (k, k + rotary_dim / 2)
// (half-split, HF's rotate_half) or (2k, 2k + 1) when `interleaved` (GPT-J style).
//   x:         [tokens, heads, head_dim] f32
//   positions: [tokens]
//   inv_freq:  [rotary_dim / 2]
void apply_rope(float* x, const int64_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
                int64_t rotary_dim, const float* inv_freq, float attention_scaling,
                bool interleaved);

}  // namespace kiln::ops
