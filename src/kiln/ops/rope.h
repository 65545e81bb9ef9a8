// Rotary position embeddings: the inverse frequencies of a RopeSpec, and the rotation.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/models/model_spec.h"

namespace kiln::ops {

// The rotation frequencies [rotary_dim / 2] of `rope` for heads of `head_dim` (rotary_dim
// is rope.rotary_dim, or head_dim when 0): theta^(-2i / rotary_dim) for the default type.
// Scaled variants (linear, yarn, llama3, ...) belong here too. Throws Error for a type
// that is not implemented.
std::vector<float> rope_inv_freq(const RopeSpec& rope, int64_t head_dim);

// Rotates the first `rotary_dim` features of every head in place; the rest pass through.
// Position p rotates pair k by angle p * inv_freq[k]. Pairs are (k, k + rotary_dim / 2)
// (half-split, HF's rotate_half) or (2k, 2k + 1) when `interleaved`.
//   x:         [tokens, heads, head_dim] f32
//   positions: [tokens]
//   inv_freq:  [rotary_dim / 2]
void apply_rope(float* x, const int64_t* positions, int64_t tokens, int64_t heads, int64_t head_dim,
                int64_t rotary_dim, const float* inv_freq, bool interleaved);

}  // namespace kiln::ops
