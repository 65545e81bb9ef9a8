// RoPE frequencies: the inverse frequency of every rotary pair and the attention scaling
// (the factor on cos and sin) for each RoPE type of HF transformers, in float32 and in the
// order of operations transformers uses, so that angles match the reference bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/models/model_spec.h"

namespace kiln::ops {

struct RopeFrequencies {
  // Pair k of a token at position p turns by the angle p * inv_freq[k].
  std::vector<float> inv_freq;     // [rotary_dim / 2]
  float attention_scaling = 1.0f;  // multiplies cos and sin (YaRN, LongRoPE); 1 otherwise
};

// The frequencies of `rope` for heads of `head_dim` when the sequence holds
// `sequence_length` positions (the largest position + 1). The rotary dimension is
// rope.rotary_dim, or head_dim when that is 0; it must be even and at most head_dim.
// Types:
//   default   theta^(-2k / rotary_dim)
//   linear    default / factor
//   dynamic   default with theta grown to theta * (factor * n / max - (factor - 1))^(d / (d - 2))
//             once n = sequence_length exceeds max_position (HF's NTK-aware scaling)
//   yarn      per pair a ramp between default (fast pairs) and default / factor (slow pairs),
//             bounded by beta_fast / beta_slow rotations over original_max_position;
//             scaling = attention_factor, or mscale ratio (DeepSeek), or 0.1 ln(factor) + 1
//   llama3    default / factor for wavelengths above original_max / low_freq_factor,
//             unchanged below original_max / high_freq_factor, smoothly blended between
//   longrope  default / short_factor[k], or / long_factor[k] once sequence_length exceeds
//             original_max_position; scaling = attention_factor or
//             sqrt(1 + ln(factor) / ln(original_max_position))
// Throws Error on settings it cannot use (type kNone, odd rotary dimension, factor lists of
// the wrong length, non-positive factors or lengths).
RopeFrequencies rope_frequencies(const RopeSpec& rope, int64_t head_dim, int64_t sequence_length);

// A key such that rope_frequencies(rope, d, n1) and rope_frequencies(rope, d, n2) are
// identical exactly when the keys of n1 and n2 are equal: 0 for types that ignore the
// length, max(n, max_position) for dynamic NTK, and whether n exceeds original_max_position
// for LongRoPE. Keys rotated for one sequence length are stale once the key changes (a full
// recomputation of the longer sequence rotates them differently).
int64_t rope_frequency_key(const RopeSpec& rope, int64_t sequence_length);

}  // namespace kiln::ops
